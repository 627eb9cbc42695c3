"""Gateway keys: HTTP bearer keys, and the WebSocket's `bearer.<key>` subprotocol with close code 1008."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body

ENV = {"GATEWAY_KEYS": "key-one, key-two"}


@pytest.fixture(scope="module")
def guarded(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    from app.config.settings import settings_from_dict

    settings = settings_from_dict(settings_dict(fake_provider.base_url, server={"api_keys_env": "GATEWAY_KEYS"}), ENV)
    server = ServerThread(settings, environ=ENV).start()
    yield server
    server.stop()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2V5LW9uZQ=="}])
async def test_http_without_a_valid_key_is_401(guarded: ServerThread, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=guarded.base_url) as c:
        r = await c.post("/v1/chat/completions", json=chat_body("normal"), headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert (await c.get("/v1/models", headers=headers)).status_code == 401
        assert (await c.get("/health/live")).status_code == 200  # probes need no key


@pytest.mark.usefixtures("fake")
async def test_http_with_a_key(guarded: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=guarded.base_url) as c:
        for headers in ({"Authorization": "Bearer key-two"}, {"X-API-Key": "key-one"}):
            r = await c.post("/v1/chat/completions", json=chat_body("normal"), headers=headers)
            assert r.status_code == 200


async def test_websocket_without_key_closes_1008_after_handshake(guarded: ServerThread) -> None:
    async with connect(guarded.ws_url, subprotocols=["chat.v1"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v1"  # the handshake completed: browsers can read the close code
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


@pytest.mark.usefixtures("fake")
async def test_websocket_bearer_subprotocol(guarded: ServerThread) -> None:
    async with connect(guarded.ws_url, subprotocols=["chat.v1", "bearer.key-one"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v1"
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "a", "request": chat_body("normal")}))
        while (frame := json.loads(await ws.recv()))["type"] == "chat.completion.chunk":
            pass
        assert frame["type"] == "chat.completion.done"


async def test_websocket_wrong_bearer_closes_1008(guarded: ServerThread) -> None:
    async with connect(guarded.ws_url, subprotocols=["chat.v1", "bearer.wrong"]) as ws:  # type: ignore[list-item]
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


@pytest.mark.usefixtures("fake")
@pytest.mark.parametrize("headers", [{"X-API-Key": "key-two"}, {"Authorization": "Bearer key-one"}])
async def test_websocket_accepts_the_keys_http_accepts(guarded: ServerThread, headers: dict[str, str]) -> None:
    """API.md 6: a gateway key is accepted the same way on every transport (the handshake's headers)."""
    async with connect(guarded.ws_url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "a", "request": chat_body("normal")}))
        while (frame := json.loads(await ws.recv()))["type"] == "chat.completion.chunk":
            pass
        assert frame["type"] == "chat.completion.done"


@pytest.mark.usefixtures("fake")
async def test_the_responses_websocket_accepts_x_api_key(guarded: ServerThread) -> None:
    url = guarded.ws_url.replace("/v1/chat/completions", "/v1/responses")
    async with connect(url, additional_headers={"X-API-Key": "key-two"}) as ws:
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "hi"}))
        while (event := json.loads(await ws.recv()))["type"] not in ("response.completed", "error"):
            pass
        assert event["type"] == "response.completed"


async def test_websocket_wrong_x_api_key_closes_1008(guarded: ServerThread) -> None:
    async with connect(guarded.ws_url, additional_headers={"X-API-Key": "wrong"}) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
