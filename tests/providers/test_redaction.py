"""Every configured secret is redacted from provider text in its plain, base64 and percent-encoded
forms, on both provider paths, over JSON, SSE and WebSocket (API.md 6).

The finding: a provider echoing its key base64-encoded (``b64=c2stdXBz...``) reached clients in
development. Here the fake provider's error messages carry the provider key and the gateway keys
(the ``server.api_keys_env`` key and a named key's ``key_env`` value) in every encoded form, standing
alone and inside longer base64 strings at each byte alignment.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from websockets.asyncio.client import connect

from app.config.settings import settings_from_dict
from app.providers.quoting import REDACTED, ProviderText
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.sse import stream_chat

PROVIDER_KEY = "sk-ups+tr/eam=Z9x8c7v6b5n4m3a2"  # '+', '/' and '=' make its encodings differ
DEFAULT_KEY = "gw-default-key~0271828182"
NAMED_KEY = "gw-named-key/1414213562"
SECRETS = (PROVIDER_KEY, DEFAULT_KEY, NAMED_KEY)
ENV = {"REDACTION_PROVIDER_KEY": PROVIDER_KEY, "REDACTION_GATEWAY_KEYS": DEFAULT_KEY, "REDACTION_NAMED": NAMED_KEY}
AUTH = {"Authorization": f"Bearer {DEFAULT_KEY}"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def urlsafe(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encodings(secret: str) -> list[str]:
    """The secret as a provider (or a proxy in front of it) might echo it."""
    raw = secret.encode()
    return [
        secret,
        b64(raw),
        urlsafe(raw),
        b64(b"user:" + raw),  # a Basic credential
        b64(b"a" + raw + b"tail"),  # inside a longer base64 string, each alignment
        urlsafe(b"ab" + raw + b"t"),
        b64(b"abc" + raw),
        quote(secret, safe=""),
        quote_plus(secret),
        "".join(f"%{byte:02X}" for byte in raw),
        quote(secret, safe="").lower(),
    ]


LEAKY = " | ".join(f"k{i}={form}" for secret in SECRETS for i, form in enumerate(encodings(secret)))
LEAKS: dict[str, Behaviour] = {
    "leak_400": Behaviour(kind="error", status=400, error_code="invalid_value", error_message=LEAKY),
    "leak_500": Behaviour(kind="error", status=500, error_message=LEAKY),
    "leak_in_stream": Behaviour(kind="stream_error", drop_after=2, error_message=LEAKY),
}


def leaked(text: str) -> list[str]:
    """What of any secret ``text`` still holds: an encoded form, or 10 characters of one's middle."""
    found = []
    for secret in SECRETS:
        for form in encodings(secret):
            middle = form[len(form) // 2 - 5 : len(form) // 2 + 5]
            if form in text or middle in text:
                found.append(form)
    return found


@pytest.fixture(scope="module", params=["fast/development", "full/development", "fast/production", "full/production"])
def server(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    for name, behaviour in LEAKS.items():
        fake_provider.set_behaviour(name, behaviour)
    path, env = request.param.split("/")
    data = settings_dict(fake_provider.base_url, fast_path=path == "fast")
    data["server"].update(env=env, api_keys_env="REDACTION_GATEWAY_KEYS")
    data["keys"] = [{"name": "named", "key_env": "REDACTION_NAMED"}]
    for name in LEAKS:
        data["models"]["deployments"].append(
            {
                "name": name,
                "litellm_model": f"openai/{name}",
                "api_base": fake_provider.base_url,
                "api_key_env": "REDACTION_PROVIDER_KEY",
                "fast_path": path == "fast",
            }
        )
    gateway = ServerThread(settings_from_dict(data, environ=ENV), environ=ENV).start()
    yield gateway
    gateway.stop()


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize("model", ["leak_400", "leak_500"])
async def test_json_and_sse_errors_carry_no_form_of_any_secret(server: ServerThread, model: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10, headers=AUTH) as c:
        reply = await c.post("/v1/chat/completions", json=body(model))
        streamed = await stream_chat(c, body(model, stream=True))
    assert reply.status_code in (400, 502, 503), reply.text
    texts = [reply.text, json.dumps([e.__dict__ for e in streamed.events], default=str)]
    for text in texts:
        assert leaked(text) == [], text
    message = reply.json()["error"]["message"]
    if server.settings.production:
        assert "k0=" not in message, "production shows the gateway's words, not the provider's"
    else:
        assert REDACTED in message, message  # the provider's words, redacted


async def test_an_in_stream_error_carries_no_form_of_any_secret(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10, headers=AUTH) as c:
        streamed = await stream_chat(c, body("leak_in_stream", stream=True))
    errors = [e for e in streamed.events if e.event == "error"]
    assert errors, streamed.events
    assert leaked(json.dumps([e.__dict__ for e in streamed.events], default=str)) == []


async def test_websocket_errors_carry_no_form_of_any_secret(server: ServerThread) -> None:
    async with connect(server.ws_url, additional_headers={"X-API-Key": NAMED_KEY}) as ws:
        frames = []
        for i, model in enumerate(("leak_400", "leak_500", "leak_in_stream")):
            await ws.send(json.dumps({"type": "chat.completion.create", "id": f"r{i}", "request": body(model)}))
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if frame["type"] in ("error", "chat.completion.done") and frame.get("id") == f"r{i}":
                    break
    assert any(f["type"] == "error" for f in frames)
    assert leaked(json.dumps(frames)) == []


def test_every_form_of_every_secret_is_redacted() -> None:
    quote_ = ProviderText(SECRETS)
    redacted = quote_.redact_secrets(LEAKY)
    assert leaked(redacted) == [], redacted
    assert redacted.count(REDACTED) == len(SECRETS) * len(encodings(PROVIDER_KEY))
    innocent = "base64 of hello: aGVsbG8gd29ybGQ=, a URL: https://example.com/a%20b, 'sk' alone"
    assert quote_.redact_secrets(innocent) == innocent


def test_unexpected_errors_show_no_internal_text_in_production_and_redacted_text_in_development() -> None:
    from app.domain.errors import public_error

    quote_ = ProviderText(SECRETS)
    failure = RuntimeError(f"library said: Authorization: Basic {b64(b'user:' + PROVIDER_KEY.encode())}")
    shown = public_error(failure, production=True, redact=quote_.redact).message
    assert "library" not in shown and "RuntimeError" not in shown
    shown = public_error(failure, production=False, redact=quote_.redact).message
    assert shown.startswith("RuntimeError: library said") and leaked(shown) == []


def test_a_logged_traceback_is_redacted_whole() -> None:
    from app.providers.quoting import traceback_text

    try:
        raise ValueError(f"provider echoed {quote(PROVIDER_KEY, safe='')} and {b64(NAMED_KEY.encode())}")
    except ValueError as exc:
        text = traceback_text(exc, ProviderText(SECRETS))
    assert text.startswith("Traceback") and "ValueError: provider echoed" in text
    assert leaked(text) == []
