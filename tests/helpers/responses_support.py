"""Shared by the Responses API tests: a real ``python -m app`` in front of the fake provider, and
strict validation of what it sends against the openai SDK's own types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from loadtests.processes import GatewayProcess
from tests.helpers.fake_provider import SCRIPTED_MODELS, FakeProvider

KEY_A, KEY_B = "resp-key-a", "resp-key-b"
MODELS = [
    "normal", "tools", "reasoning", "slow_gap", "paced", "hang", "server_error", "drop", "drain_long",
    *SCRIPTED_MODELS,
]  # fmt: skip
_events = TypeAdapter(ResponseStreamEvent)
_items: TypeAdapter[Any] = TypeAdapter(ResponseItem)


def gateway_config(fake: FakeProvider, *, fast_path: bool = True, extra: str = "", streaming: str = "") -> str:
    deployments = "".join(
        f'[[models.deployments]]\nname = "{name}"\nlitellm_model = "openai/{name}"\n'
        f'api_base = "{fake.base_url}"\nfast_path = {str(fast_path).lower()}\ntimeout_s = 10\n\n'
        for name in MODELS
    )
    return (
        '[server]\napi_keys_env = "GW_RESPONSES_KEYS"\nmax_body_bytes = 1048576\n\n'
        "[streaming]\nstatus_window_s = 0.3\nheartbeat_s = 0.2\nfirst_token_timeout_s = 3\n"
        f"idle_timeout_s = 3\nresume_ttl_s = 30\n{streaming}\n"
        f"{extra}\n{deployments}"
    )


def start_gateway(
    workdir: Path,
    fake: FakeProvider,
    *,
    fast_path: bool = True,
    extra: str = "",
    streaming: str = "",
    name: str = "responses-gateway",
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    config = gateway_config(fake, fast_path=fast_path, extra=extra, streaming=streaming)
    env = {"GW_RESPONSES_KEYS": f"{KEY_A},{KEY_B}", **(env or {})}
    return GatewayProcess(workdir, config, env, name=name).wait_ready()


def valid_response(data: dict[str, Any]) -> Response:
    """The object validated strictly (the SDK itself builds its models without validating)."""
    return Response.model_validate(data)


def valid_event(data: dict[str, Any]) -> Any:
    return _events.validate_python(data)


def sse_events(text: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) of each SSE event; comments (heartbeats) skipped."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            out.append((fields.get("event", ""), fields.get("id", ""), json.loads(fields["data"])))
    return out


def valid_item(data: dict[str, Any]) -> Any:
    return _items.validate_python(data)
