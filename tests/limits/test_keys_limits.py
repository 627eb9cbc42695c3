"""Named gateway keys on one replica, with counters in memory and in Redis (a private redis-server):
allow-lists, requests, tokens and streams per minute, budgets, rate-limit headers and metrics, over
HTTP (JSON and SSE) and WebSocket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from app.config.settings import settings_from_dict
from tests.conftest import RedisServer, ServerThread
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.keys_config import DEFAULT_KEY, ENV, KEYS, auth, keys_settings_dict
from tests.helpers.sse import chat_body

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module", params=["memory", "redis"])
def keyed(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    redis = RedisServer().start() if request.param == "redis" else None
    sections: dict[str, Any] = {"rate_limit": {"backend": request.param}}
    if redis is not None:
        sections["redis"] = {"url": redis.url}
    settings = settings_from_dict(keys_settings_dict(fake_provider, **sections), ENV)
    server = ServerThread(settings, environ=ENV).start()
    yield server
    server.stop()
    if redis is not None:
        redis.stop()


async def spent(server: ServerThread, key: str, usd: float) -> None:
    """Until ``key`` has been charged ``usd`` and the charge has reached the limiter's backend (bounded).

    A call is charged after its last byte has gone out (a stream's in its close), and the Redis
    backend writes the charge from a task of its own: the next request may come before either.
    """
    metrics = server.app.state.metrics
    backend = server.app.state.services.limiter._backend
    deadline = time.monotonic() + 5
    while metrics.spend.get((key, "priced"), 0.0) < usd - 1e-9 or getattr(backend, "_tasks", ()):
        assert time.monotonic() < deadline, f"{key} was never charged ${usd}"
        await asyncio.sleep(0.01)


async def admitted_once_released(c: httpx.AsyncClient, key: str, never: str) -> None:
    """Ask until ``key``'s request is admitted (200): its lease comes back as the server sees the
    holder go, which may be after the client has moved on (bounded)."""
    deadline = time.monotonic() + 5
    while (r := await c.post(CHAT, json=chat_body("normal"), headers=auth(key))).status_code == 429:
        assert time.monotonic() < deadline, never
        await asyncio.sleep(0.05)
    assert r.status_code == 200, r.text


async def ws_create(server: ServerThread, key: str, body: dict[str, Any], frame_id: str = "a") -> list[dict[str, Any]]:
    """One request over a socket: its frames up to its done or error frame."""
    frames: list[dict[str, Any]] = []
    async with connect(server.ws_url, subprotocols=["chat.v1", f"bearer.{key}"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "chat.completion.create", "id": frame_id, "request": body}))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if frame["type"] in ("chat.completion.done", "error"):
                    return frames


async def test_named_keys_by_env_and_by_digest_and_the_default_key(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        for headers in (auth("hashed"), auth("allow"), {"Authorization": f"Bearer {DEFAULT_KEY}"}):
            assert (await c.post(CHAT, json=chat_body("normal"), headers=headers)).status_code == 200
        assert (await c.post(CHAT, json=chat_body("normal"), headers={"Authorization": "Bearer x"})).status_code == 401


async def test_allow_list_403_over_http_and_websocket(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        assert (await c.post(CHAT, json=chat_body("slow_first"), headers=auth("allow"))).status_code == 200  # glob
        for stream in (False, True):
            r = await c.post(CHAT, json=chat_body("fast", stream=stream), headers=auth("allow"))
            assert r.status_code == 403
            assert r.json()["error"] == {
                "message": "This key may not use the model `fast`.",
                "type": "permission_error",
                "param": "model",
                "code": "model_not_allowed",
            }
        # An unknown model is still a 404, whatever the allow-list says.
        assert (await c.post(CHAT, json=chat_body("nope"), headers=auth("allow"))).status_code == 404
    frames = await ws_create(keyed, KEYS["allow"], chat_body("fast"))
    assert frames[-1]["type"] == "error" and frames[-1]["status"] == 403 and frames[-1]["id"] == "a"
    assert frames[-1]["error"]["code"] == "model_not_allowed"
    frames = await ws_create(keyed, KEYS["allow"], chat_body("normal"))
    assert frames[-1]["type"] == "chat.completion.done"


async def test_models_endpoints_list_only_the_keys_models(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        ids = {m["id"] for m in (await c.get("/v1/models", headers=auth("allow"))).json()["data"]}
        assert ids == {"normal", "slow_first", "slow_gap", "slower_first"}
        info = {m["id"] for m in (await c.get("/api/models", headers=auth("hashed"))).json()["data"]}
        assert info == {"normal"}
        found = {m["id"] for m in (await c.get("/api/models/search", headers=auth("hashed"))).json()["data"]}
        assert found == {"normal"}
        cats = (await c.get("/api/models/categories", headers=auth("hashed"))).json()["categories"]
        assert {m for ms in cats.values() for m in ms} <= {"normal"}
        everything = (await c.get("/v1/models", headers=auth("rpm"))).json()["data"]
        assert len(everything) > 10  # no allow-list: every model


def _retry_after(r: httpx.Response) -> int:
    value = r.headers["retry-after"]
    assert value.isdigit() and 1 <= int(value) <= 60
    return int(value)


async def test_requests_per_minute_429_with_retry_after_and_headers(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        if time.time() % 60 > 55:
            await asyncio.sleep(61 - time.time() % 60)  # all four requests in one minute
        first = await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "3"
        assert first.headers["x-ratelimit-remaining-requests"] == "2"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        async with c.stream("POST", CHAT, json=chat_body("normal", stream=True), headers=auth("rpm")) as sse:
            assert sse.status_code == 200 and sse.headers["x-ratelimit-remaining-requests"] == "1"
            await sse.aread()
        # An error after admission (404 comes first; a provider error here) still carries the headers.
        r = await c.post(CHAT, json=chat_body("bad_request"), headers=auth("rpm"))
        assert r.status_code == 400 and r.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        _retry_after(refused)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-limit-tokens" not in refused.headers  # no token limit on this key
        metrics = (await c.get("/metrics")).text
    assert 'chat_rate_limited_total{key="rpm",reason="requests"} 1.0' in metrics
    frames = await ws_create(keyed, KEYS["rpm"], chat_body("normal"))
    assert frames[-1]["type"] == "error" and frames[-1]["status"] == 429


async def test_tokens_per_minute_counts_the_body_then_the_output(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        if time.time() % 60 > 55:
            await asyncio.sleep(61 - time.time() % 60)
        big = chat_body("normal", content="x" * 2000)  # about 500 tokens: over the key's 300 at once
        refused = await c.post(CHAT, json=big, headers=auth("tpm"))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        _retry_after(refused)
        assert refused.headers["x-ratelimit-limit-tokens"] == "300"
        ok = await c.post(CHAT, json=chat_body("normal"), headers=auth("tpm"))
        assert ok.status_code == 200
        before = int(ok.headers["x-ratelimit-remaining-tokens"])
        assert 280 < before < 300
        await asyncio.sleep(0.2)  # settlement is after the response
        again = await c.post(CHAT, json=chat_body("normal"), headers=auth("tpm"))
        output = json.loads(ok.text)["usage"]["completion_tokens"]
        spent_by_second = before - int(again.headers["x-ratelimit-remaining-tokens"])
        assert spent_by_second > output  # its own estimate plus the first call's output tokens
        metrics = (await c.get("/metrics")).text
    assert 'chat_rate_limited_total{key="tpm",reason="tokens"} 1.0' in metrics


async def test_concurrent_streams_json_sse_websocket_and_release_on_disconnect(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        client = httpx.AsyncClient(base_url=keyed.base_url, timeout=10)
        holder = client.stream("POST", CHAT, json=chat_body("hang_after_headers", stream=True), headers=auth("conc"))
        sse = await holder.__aenter__()
        try:
            assert sse.status_code == 200  # one stream open for this key
            for stream in (False, True):
                r = await c.post(CHAT, json=chat_body("normal", stream=stream), headers=auth("conc"))
                assert r.status_code == 429, r.text
                assert r.headers["retry-after"] == "1"
            frames = await ws_create(keyed, KEYS["conc"], chat_body("normal"))
            assert frames[-1]["type"] == "error" and frames[-1]["status"] == 429
            assert frames[-1]["error"]["code"] == "rate_limit_exceeded"
        finally:
            await holder.__aexit__(None, None, None)  # the client disconnects mid-stream
            await client.aclose()
        # The lease goes back as the server sees the disconnect.
        await admitted_once_released(c, "conc", "the lease was never released")
        # A finished WebSocket request gives its lease back too (its close follows the done frame).
        assert (await ws_create(keyed, KEYS["conc"], chat_body("normal")))[-1]["type"] == "chat.completion.done"
        await admitted_once_released(c, "conc", "the WebSocket request's lease was never released")
        metrics = (await c.get("/metrics")).text
    refused = [line for line in metrics.splitlines() if line.startswith('chat_rate_limited_total{key="conc"')]
    # Three refusals above, plus any while the server had not yet seen the client leave.
    assert refused and 'reason="concurrency"' in refused[0] and float(refused[0].split()[-1]) >= 3


async def test_budget_reached_after_a_few_priced_calls(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        # $0.20 a call against $0.50: three calls start within budget, the fourth is refused.
        assert (await c.post(CHAT, json=chat_body("priced"), headers=auth("budget"))).status_code == 200
        async with c.stream("POST", CHAT, json=chat_body("priced", stream=True), headers=auth("budget")) as r:
            assert r.status_code == 200
            await r.aread()
        await spent(keyed, "budget", 0.4)
        frames = await ws_create(keyed, KEYS["budget"], chat_body("priced"))
        assert frames[-1]["type"] == "chat.completion.done"  # $0.40 spent: still within budget
        await spent(keyed, "budget", 0.6)
        refused = await c.post(CHAT, json=chat_body("priced"), headers=auth("budget"))
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "insufficient_quota"
        assert refused.json()["error"]["code"] == "budget_exceeded"
        retry = int(refused.headers["retry-after"])  # until the next UTC midnight
        assert 0 < retry <= 86_400
        # A `total` budget never resets: its 429 has no Retry-After.
        assert (await c.post(CHAT, json=chat_body("priced"), headers=auth("forever"))).status_code == 200
        await spent(keyed, "forever", 0.2)
        forever = await c.post(CHAT, json=chat_body("priced"), headers=auth("forever"))
        assert forever.status_code == 429 and forever.json()["error"]["code"] == "budget_exceeded"
        assert "retry-after" not in forever.headers
        metrics = (await c.get("/metrics")).text
    assert 'chat_rate_limited_total{key="budget",reason="budget"} 1.0' in metrics
    spend = [line for line in metrics.splitlines() if line.startswith('chat_spend_usd_total{key="budget"')]
    assert spend and abs(float(spend[0].split()[-1]) - 0.6) < 1e-9 and 'model="priced"' in spend[0]


async def test_no_key_text_in_errors_metrics_or_schema(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=keyed.base_url, timeout=10) as c:
        texts = [
            (await c.post(CHAT, json=chat_body("fast"), headers=auth("allow"))).text,
            (await c.get("/metrics")).text,
            (await c.get("/schema/openapi.json")).text,
            (await c.get("/schema")).text,
        ]
    for text in texts:
        for key in [*KEYS.values(), DEFAULT_KEY]:
            assert key not in text and key[3:15] not in text
