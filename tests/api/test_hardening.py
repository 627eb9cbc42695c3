"""Hostile clients and misbehaving providers: one test (or more) per finding of the hardening review.

1. a client cannot steer the provider layer; 2. provider text never leaks a key; 3. single-flight
cannot leak; 4. depth limits; 5. WebSocket origins; 7. malformed values are the client's 400.
(6, connection bounds, is tests/api/test_connection_bounds.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.config.settings import settings_from_dict
from app.observability.log import MAX_FIELD_CHARS, cap_fields
from app.providers.quoting import REDACTED, ProviderText
from loadtests.processes import GatewayProcess
from tests.api.test_bad_input import assert_error
from tests.api.test_websocket import cancel, create, recv, until_end
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.sse import stream_chat

CHAT = "/v1/chat/completions"
PROVIDER_KEY = "sk-live-Z9x8c7v6b5n4m3a2s1d0f9g8h7"
GATEWAY_KEY = "gw-local-key-3141592653"
KEY_ENV = "HARDENING_PROVIDER_KEY"

#: Provider behaviours that echo the request's credentials back in every kind of error.
ECHOES: dict[str, Behaviour] = {
    "echo_400": Behaviour(kind="error", status=400, error_code="invalid_value", echo_credentials=True),
    "echo_401": Behaviour(kind="error", status=401, error_code="invalid_api_key", echo_credentials=True),
    "echo_403": Behaviour(kind="error", status=403, error_code="forbidden", echo_credentials=True),
    "echo_404": Behaviour(kind="error", status=404, error_code="model_not_found", echo_credentials=True),
    "echo_429": Behaviour(kind="error", status=429, retry_after="2", echo_credentials=True),
    "echo_500": Behaviour(kind="error", status=500, echo_credentials=True),
    "echo_503": Behaviour(kind="error", status=503, echo_credentials=True),
    "echo_plain": Behaviour(kind="error", status=502, echo_credentials=True, plain_error=True),
    "echo_in_stream": Behaviour(kind="stream_error", drop_after=2, echo_credentials=True),
}


def body(model: str = "normal", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def keyed_settings(base_url: str, *, fast_path: bool, env: str = "development", **sections: Any) -> Any:
    data = settings_dict(base_url, fast_path=fast_path, **sections)
    data["server"]["env"] = env
    for name in ECHOES:
        data["models"]["deployments"].append(
            {
                "name": name,
                "litellm_model": f"openai/{name}",
                "api_base": base_url,
                "api_key_env": KEY_ENV,
                "fast_path": fast_path,
            }
        )
    return settings_from_dict(data, environ={KEY_ENV: PROVIDER_KEY})


@pytest.fixture(scope="module", params=["fast/development", "full/development", "fast/production", "full/production"])
def keyed(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    for name, behaviour in ECHOES.items():
        fake_provider.set_behaviour(name, behaviour)
    path, env = request.param.split("/")
    settings = keyed_settings(fake_provider.base_url, fast_path=path == "fast", env=env)
    server = ServerThread(settings, environ={KEY_ENV: PROVIDER_KEY}).start()
    yield server
    server.stop()


@pytest.fixture
async def kclient(keyed: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        yield c


# -- 1. a client cannot steer the provider layer ----------------------------------------------------

CONTROLS: list[tuple[str, Any]] = [
    ("api_base", "http://127.0.0.1:9/steal"),
    ("base_url", "http://127.0.0.1:9/steal"),
    ("api_key", "sk-attacker"),
    ("api_version", "2024-01-01"),
    ("custom_llm_provider", "openai"),
    ("num_retries", 5),
    ("fallbacks", ["demo"]),
    ("timeout", 0.001),
    ("mock_response", "pwned"),
    ("extra_headers", {"X-Evil": "1"}),
    ("extra_body", {"api_base": "http://127.0.0.1:9"}),
    ("litellm_logging_obj", {}),
    ("aws_secret_access_key", "x"),
]


@pytest.mark.parametrize(("field", "value"), CONTROLS, ids=[c[0] for c in CONTROLS])
async def test_provider_controls_are_refused_naming_the_field(
    client: httpx.AsyncClient, fake: FakeProvider, field: str, value: Any
) -> None:
    response = await client.post(CHAT, json=body(**{field: value}))
    assert_error(response, 400, code="unsupported_parameter", param=field)
    assert field in response.json()["error"]["message"]
    assert fake.calls() == 0, "a refused request must not reach the provider"


async def test_provider_controls_are_refused_over_websocket(gateway: ServerThread, fake: FakeProvider) -> None:
    async with connect(gateway.ws_url, subprotocols=["chat.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
        await ws.send(create("x", mock_response="pwned", api_base="http://127.0.0.1:9"))
        frames = await until_end(ws, "x")
        assert frames[-1]["type"] == "error" and frames[-1]["status"] == 400
        assert frames[-1]["error"]["code"] == "unsupported_parameter"
    assert fake.calls() == 0


async def test_unknown_fields_reach_the_provider_as_body_fields_only(
    client: httpx.AsyncClient, fake: FakeProvider
) -> None:
    extra = {"x_vendor_option": {"depth": [1, 2]}, "top_k": 3, "metadata": {"team": "a"}, "user": "u-1"}
    response = await client.post(CHAT, json=body(**extra))
    assert response.status_code == 200, response.text
    seen = fake.requests[0].body
    assert seen["x_vendor_option"] == {"depth": [1, 2]}
    assert seen["top_k"] == 3
    assert seen["metadata"] == {"team": "a"}
    assert seen["model"] == "normal", "the deployment's model, never the client's provider string"


# -- 2. provider text is quoted, never trusted ------------------------------------------------------


@pytest.mark.parametrize("model", [m for m in ECHOES if m != "echo_in_stream"])
async def test_provider_errors_never_carry_a_key(kclient: httpx.AsyncClient, keyed: ServerThread, model: str) -> None:
    json_reply = await kclient.post(CHAT, json=body(model))
    sse_reply = await stream_chat(kclient, body(model, stream=True))
    for text in (json_reply.text, json.dumps([e.__dict__ for e in sse_reply.events], default=str)):
        assert PROVIDER_KEY not in text
        assert PROVIDER_KEY[8:20] not in text, "no part of the key either"
    assert json_reply.status_code < 500 or json_reply.json()["error"]["type"] in ("upstream_error", "timeout_error")
    message = json_reply.json()["error"]["message"]
    if keyed.settings.production:
        assert "Incorrect API key" not in message, "production shows our words, not the provider's"
    elif model not in ("echo_401", "echo_403", "echo_plain"):  # our own message (LiteLLM drops plain text)
        assert REDACTED in message, f"the provider's words are quoted, redacted: {message}"
    assert len(message) <= 700


async def test_in_stream_provider_error_never_carries_a_key(kclient: httpx.AsyncClient) -> None:
    result = await stream_chat(kclient, body("echo_in_stream", stream=True))
    errors = [e for e in result.events if e.event == "error"]
    assert errors, result.events
    assert PROVIDER_KEY not in (errors[0].data or "")
    assert errors[0].json()["error"]["type"] == "upstream_error"


async def test_provider_403_is_upstream_authentication(kclient: httpx.AsyncClient) -> None:
    response = await kclient.post(CHAT, json=body("echo_403"))
    assert_error(response, 502, type_="upstream_error", code="upstream_authentication")


def test_quoting_redacts_configured_secrets_and_credential_shapes() -> None:
    quote = ProviderText([PROVIDER_KEY, "short"])
    text = (
        f"bad key {PROVIDER_KEY}; Authorization: Bearer abc.def-ghi; x-api-key=zzz123; "
        '"api_key": "k-9"; sk-proj-AAAAAAAABBBBBB; the word short stays'
    )
    redacted = quote.redact(text)
    for secret in (PROVIDER_KEY, "abc.def-ghi", "zzz123", "k-9", "AAAAAAAABBBBBB"):
        assert secret not in redacted
    assert redacted.count(REDACTED) >= 5
    assert "short stays" in redacted, "secrets shorter than 6 characters are not redacted literally"
    assert len(quote.redact("x" * 5000)) <= 510


# -- 3. single-flight cannot leak -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    data = settings_dict(fake_provider.base_url, cache={"enabled": True, "backend": "memory", "ttl_s": 60})
    server = ServerThread(settings_from_dict(data, environ={})).start()
    yield server
    server.stop()


async def test_websocket_create_then_cancel_leaves_no_flight(cached: ServerThread, fake: FakeProvider) -> None:
    request = body("normal", messages=[{"role": "user", "content": "single-flight leak probe"}])
    async with connect(cached.ws_url, subprotocols=["chat.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
        for i in range(50):
            frame = {"type": "chat.completion.create", "id": f"r{i}", "request": request}
            await ws.send(json.dumps(frame) + "")
            await ws.send(cancel(f"r{i}"))
        ended = 0
        while ended < 50:
            frame = await recv(ws)
            ended += frame["type"] in ("chat.completion.done", "error")
    flights = cached.call(_flight_count(cached))
    assert flights == 0, f"{flights} single-flight entries left behind"
    # An identical request from another client is answered at once, not after the deployment's timeout.
    async with httpx.AsyncClient(base_url=cached.base_url, timeout=5) as other:
        response = await asyncio.wait_for(other.post(CHAT, json=request), 5)
    assert response.status_code == 200


async def _flight_count(server: ServerThread) -> int:
    cache = server.app.state.services.cache
    return len(cache._flights)


# -- 4. depth and size limits -----------------------------------------------------------------------


async def test_deeply_nested_body_is_a_400(client: httpx.AsyncClient) -> None:
    nested = "[" * 1000 + "]" * 1000
    raw = '{"model": "normal", "messages": [{"role": "user", "content": "hi"}], "x": ' + nested + "}"
    response = await client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, code="too_deep")
    assert "RecursionError" not in response.text


async def test_brackets_inside_strings_do_not_count_as_depth(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=body(messages=[{"role": "user", "content": "[{" * 500 + '\\"]'}]))
    assert response.status_code == 200, response.text


async def test_deeply_nested_frame_is_an_error_frame_and_the_socket_stays(gateway: ServerThread) -> None:
    async with connect(gateway.ws_url, subprotocols=["chat.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
        await ws.send('{"type": "chat.completion.create", "id": "d", "request": ' + "[" * 1000 + "]" * 1000 + "}")
        frame = await recv(ws)
        assert frame["type"] == "error" and frame["status"] == 400 and frame["id"] is None
        await ws.send(create("after"))
        frames = await until_end(ws, "after")
        assert frames[-1]["type"] == "chat.completion.done"


async def test_huge_model_name_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=body("m" * 60_000))  # under the test server's body limit
    assert_error(response, 400, param="model")
    assert len(response.text) < 2000


def test_log_fields_are_capped() -> None:
    event = cap_fields(None, "info", {"model": "m" * 500_000, "exception": "t" * 5000})
    assert len(event["model"]) < MAX_FIELD_CHARS + 40
    assert event["model"].endswith("(500000 chars)")
    assert len(event["exception"]) == 5000, "tracebacks are kept whole"


# -- 5. WebSocket origins ---------------------------------------------------------------------------


async def test_cross_site_websocket_is_refused(gateway: ServerThread) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            gateway.ws_url,
            subprotocols=["chat.v1"],  # type: ignore[list-item]
            origin="https://evil.example",  # type: ignore[arg-type]
            open_timeout=5,
        ):
            pass
    assert info.value.response.status_code == 403


@pytest.mark.parametrize("origin", [None, "same"])
async def test_same_origin_and_originless_websockets_are_served(gateway: ServerThread, origin: str | None) -> None:
    value = f"http://127.0.0.1:{gateway.port}" if origin == "same" else None
    async with connect(
        gateway.ws_url,
        subprotocols=["chat.v1"],  # type: ignore[list-item]
        origin=value,  # type: ignore[arg-type]
        open_timeout=5,
    ) as ws:
        await ws.send(create("o"))
        assert (await until_end(ws, "o"))[-1]["type"] == "chat.completion.done"


async def test_configured_origin_is_served(fake_provider: FakeProvider) -> None:
    data = settings_dict(fake_provider.base_url, server={"cors_origins": ["https://app.example"]})
    server = ServerThread(settings_from_dict(data, environ={})).start()
    try:
        async with connect(
            server.ws_url,
            subprotocols=["chat.v1"],  # type: ignore[list-item]
            origin="https://app.example",  # type: ignore[arg-type]
            open_timeout=5,
        ) as ws:
            await ws.send(create("c"))
            assert (await until_end(ws, "c"))[-1]["type"] == "chat.completion.done"
        with pytest.raises(InvalidStatus):
            async with connect(
                server.ws_url,
                subprotocols=["chat.v1"],  # type: ignore[list-item]
                origin="https://app.example.evil",  # type: ignore[arg-type]
                open_timeout=5,
            ):
                pass
    finally:
        server.stop()


# -- 7. malformed values of fields we pass on are the client's 400 ----------------------------------

MALFORMED: list[dict[str, Any]] = [
    {"response_format": True},
    {"metadata": 1},
    {"metadata": {"k": 1}},
    {"stop": 5},
    {"tool_choice": 3},
    {"logit_bias": {"1": "x"}},
    {"seed": "x"},
    {"temperature": "hot"},
    {"messages": [{"role": "", "content": "x"}]},
]


@pytest.mark.parametrize("extra", MALFORMED, ids=[next(iter(m)) + str(i) for i, m in enumerate(MALFORMED)])
async def test_malformed_values_are_the_clients_400(
    client: httpx.AsyncClient, fake: FakeProvider, extra: dict[str, Any]
) -> None:
    response = await client.post(CHAT, json=body(**extra))
    assert_error(response, 400)
    assert fake.calls() == 0


# -- 2, in the log: a real `python -m app` process, its stderr read whole --------------------------


def test_process_log_never_carries_a_key(tmp_path: Any, fake_provider: FakeProvider) -> None:

    for name, behaviour in ECHOES.items():
        fake_provider.set_behaviour(name, behaviour)
    deployments = "".join(
        f'[[models.deployments]]\nname = "{name}"\nlitellm_model = "openai/{name}"\n'
        f'api_base = "{fake_provider.base_url}"\napi_key_env = "{KEY_ENV}"\nfast_path = {str(fast).lower()}\n\n'
        for name, fast in [("echo_400", True), ("echo_in_stream", True), ("echo_500", False), ("echo_404", False)]
    )
    # Info: the provider's (redacted) words are in the request lines.
    gateway = GatewayProcess(tmp_path, deployments, {KEY_ENV: PROVIDER_KEY, "CHAT_SERVER__LOG_LEVEL": "info"})
    log = gateway.child.log
    try:
        gateway.wait_ready(60)
        with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
            for model in ("echo_400", "echo_500", "echo_404"):
                assert PROVIDER_KEY not in client.post(CHAT, json=body(model)).text
            with client.stream("POST", CHAT, json=body("echo_in_stream", stream=True)) as reply:
                assert PROVIDER_KEY not in reply.read().decode()
    finally:
        gateway.stop()
    text = log.read_text()
    assert "error_detail" in text, "the provider's (redacted) words are logged"
    assert REDACTED in text
    assert PROVIDER_KEY not in text and PROVIDER_KEY[8:20] not in text
