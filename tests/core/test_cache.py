"""Response cache against real Redis and the memory backend: hits, bypass, replay, TTL, LRU, outages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from app.cache.answer import CachedAnswer, assemble, split
from app.cache.backends import MemoryBackend, RedisBackend
from app.cache.chat_cache import cache_key
from app.config.settings import DeploymentSettings
from tests.conftest import RedisServer, ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body, stream_chat

BACKENDS = ["memory", "redis"]


@pytest.fixture(scope="module", params=BACKENDS)
def cached(request: pytest.FixtureRequest, fake_provider: FakeProvider, redis_url: str) -> Iterator[ServerThread]:
    cache = {"enabled": True, "backend": request.param, "ttl_s": 60}
    if request.param == "redis":
        cache["redis_url"] = redis_url
    server = ServerThread(make_settings(fake_provider.base_url, cache=cache)).start()
    yield server
    server.stop()


@pytest.fixture
async def cclient(cached: ServerThread, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    r = aioredis.from_url(redis_url)
    await r.flushdb()  # only the tests' own DB
    await r.aclose()
    async with httpx.AsyncClient(base_url=cached.base_url, timeout=10) as c:
        yield c


def body(model: str = "normal", content: str = "hi", **extra: Any) -> dict[str, Any]:
    return chat_body(model, content, **extra)


def unique(tag: str) -> str:
    return f"{tag}-{time.monotonic_ns()}"


async def test_json_miss_then_hit(cclient: httpx.AsyncClient, fake: FakeProvider) -> None:
    b = body(content=unique("json"))
    first = await cclient.post("/v1/chat/completions", json=b)
    second = await cclient.post("/v1/chat/completions", json=b)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.json()["choices"] == second.json()["choices"]
    assert fake.calls() == 1


async def test_sse_miss_then_hit_replays_a_stream(cclient: httpx.AsyncClient, fake: FakeProvider) -> None:
    b = body(content=unique("sse"), stream=True)
    first = await stream_chat(cclient, b)
    second = await stream_chat(cclient, b)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.content() == first.content() == "Hello, world! This is the fake provider."
    assert second.data_events[-1].data == "[DONE]"
    assert [e.json()["choices"] for e in second.data_events[:-1]] == [
        e.json()["choices"] for e in first.data_events[:-1]
    ]
    assert fake.calls() == 1


async def test_json_answer_replays_as_stream_and_back(cclient: httpx.AsyncClient, fake: FakeProvider) -> None:
    b = body(content=unique("cross"))
    assert (await cclient.post("/v1/chat/completions", json=b)).headers["x-cache"] == "MISS"
    replay = await stream_chat(cclient, {**b, "stream": True, "stream_options": {"include_usage": True}})
    assert replay.headers["x-cache"] == "HIT"
    assert replay.content() == "Hello, world! This is the fake provider."
    assert replay.data_events[-2].json()["usage"]["completion_tokens"] == 10
    assert fake.calls() == 1


async def test_cache_control_bypass(cclient: httpx.AsyncClient, fake: FakeProvider) -> None:
    b = body(content=unique("bypass"))
    no_store = await cclient.post("/v1/chat/completions", json=b, headers={"Cache-Control": "no-store"})
    assert no_store.headers["x-cache"] == "BYPASS"
    assert (await cclient.post("/v1/chat/completions", json=b)).headers["x-cache"] == "MISS"  # nothing was stored
    no_cache = await cclient.post("/v1/chat/completions", json=b, headers={"Cache-Control": "no-cache"})
    assert no_cache.headers["x-cache"] == "BYPASS"
    assert fake.calls() == 3
    assert (await cclient.post("/v1/chat/completions", json=b)).headers["x-cache"] == "HIT"


@pytest.mark.parametrize("model", ["tools", "reasoning"])
async def test_replay_preserves_tool_calls_and_reasoning(
    cclient: httpx.AsyncClient, fake: FakeProvider, model: str
) -> None:
    b = body(model, unique(model), stream=True)
    live = await stream_chat(cclient, b)
    replay = await stream_chat(cclient, b)
    assert replay.headers["x-cache"] == "HIT"

    def merged(result: Any) -> dict[str, Any]:
        chunks = [e.data.encode() for e in result.data_events if e.event is None and e.data != "[DONE]"]
        return json.loads(assemble(chunks, None))["choices"][0]

    assert merged(replay)["message"] == merged(live)["message"]
    assert merged(replay)["finish_reason"] == merged(live)["finish_reason"]
    json_response = await cclient.post("/v1/chat/completions", json={**b, "stream": False})
    assert json_response.headers["x-cache"] == "HIT", json_response.text
    json_hit = json_response.json()
    message = json_hit["choices"][0]["message"]
    if model == "tools":
        assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    else:
        assert message["reasoning_content"] == "Let me think."
        assert message["content"] == "The answer."
    assert fake.calls() == 1


async def test_errors_and_partial_streams_are_not_cached(cclient: httpx.AsyncClient, fake: FakeProvider) -> None:
    for model in ("rate_limited", "drop"):
        b = body(model, unique(model), stream=True)
        await stream_chat(cclient, b)
        second = await stream_chat(cclient, b)
        assert second.headers.get("x-cache", "MISS") == "MISS"
    assert fake.calls() == 4


async def test_single_flight_fifty_concurrent_identical_requests(
    cclient: httpx.AsyncClient, fake: FakeProvider
) -> None:
    b = body("paced", unique("flight"))
    responses = await asyncio.gather(*(cclient.post("/v1/chat/completions", json=b) for _ in range(50)))
    assert all(r.status_code == 200 for r in responses)
    assert fake.calls() == 1
    assert sorted(r.headers["x-cache"] for r in responses).count("MISS") == 1


def test_key_is_canonical() -> None:
    dep = DeploymentSettings(name="m", litellm_model="openai/x")
    a = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "seed": 1}
    b = {"seed": 1, "temperature": 0.5, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert cache_key(a, dep, "anon") == cache_key(b, dep, "anon")
    # Fields that do not change the answer do not change the key.
    assert cache_key({**a, "stream": True, "stream_options": {"include_usage": True}, "user": "u"}, dep, "anon") == (
        cache_key(a, dep, "anon")
    )
    assert cache_key({**a, "temperature": 0.7}, dep, "anon") != cache_key(a, dep, "anon")
    assert cache_key(a, dep, "other-key") != cache_key(a, dep, "anon")
    assert cache_key(a, DeploymentSettings(name="m", litellm_model="openai/y"), "anon") != cache_key(a, dep, "anon")
    assert cache_key(a, dep, "anon").startswith("chat:v1:anon:")


def _answer(text: str = "x") -> CachedAnswer:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    completion = json.dumps({"id": "c", "object": "chat.completion", "choices": [choice]}).encode()
    return CachedAnswer(completion=completion, chunks=split(completion))


async def _gone(backend: Any, key: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await backend.get(key) is None:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_ttl_expiry_memory() -> None:
    backend = MemoryBackend(max_entries=10)
    await backend.set("k", _answer(), ttl=0.2)
    assert await backend.get("k") is not None
    assert await _gone(backend, "k", within=3)


async def test_ttl_expiry_redis(redis_url: str) -> None:
    backend = RedisBackend(redis_url, op_timeout_s=1)
    try:
        await backend.set("ttl-test", _answer(), ttl=1)
        assert await backend.get("ttl-test") == _answer()
        assert await _gone(backend, "ttl-test", within=4)
    finally:
        await backend.close()


async def test_memory_lru_bound() -> None:
    backend = MemoryBackend(max_entries=3)
    for k in "abc":
        await backend.set(k, _answer(k), ttl=60)
    assert await backend.get("a") is not None  # a is now the most recently used
    for k in "de":
        await backend.set(k, _answer(k), ttl=60)
    assert len(backend) == 3
    assert [k for k in "abcde" if await backend.get(k) is not None] == ["a", "d", "e"]


async def test_poisoned_redis_value_is_a_miss(redis_url: str, fake_provider: FakeProvider) -> None:
    server = ServerThread(
        make_settings(fake_provider.base_url, cache={"enabled": True, "backend": "redis", "redis_url": redis_url})
    ).start()
    try:
        b = body(content=unique("poison"))
        dep = server.settings.deployment("normal")
        assert dep is not None
        r = aioredis.from_url(redis_url)
        await r.set(cache_key(b, dep, "anonymous"), b"\xc1\xff garbage \x00")
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            response = await c.post("/v1/chat/completions", json=b)
            assert response.status_code == 200
            assert response.headers["x-cache"] == "MISS"
            metrics = (await c.get("/metrics")).text
            assert 'chat_cache_requests_total{result="error"} 1.0' in metrics
            # The poisoned entry was replaced by the good answer.
            deadline = time.monotonic() + 3
            while (await c.post("/v1/chat/completions", json=b)).headers["x-cache"] != "HIT":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        await r.aclose()
    finally:
        server.stop()


async def test_redis_outage_degrades_and_recovers(fake_provider: FakeProvider) -> None:
    redis_server = RedisServer().start()
    cache = {"enabled": True, "backend": "redis", "redis_url": redis_server.url, "op_timeout_s": 0.2}
    server = ServerThread(make_settings(fake_provider.base_url, cache=cache)).start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            b = body(content=unique("outage"))
            assert (await c.post("/v1/chat/completions", json=b)).headers["x-cache"] == "MISS"
            assert (await c.get("/health/ready")).status_code == 200

            redis_server.stop()
            answered = await c.post("/v1/chat/completions", json=b)
            assert answered.status_code == 200
            assert answered.headers["x-cache"] == "MISS"
            sse = await stream_chat(c, {**b, "stream": True})
            assert sse.status == 200 and sse.data_events[-1].data == "[DONE]"
            ready = await c.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json() == {
                "status": "unavailable",
                "checks": {"config": "ok", "providers": "ok", "cache": "unavailable"},
            }
            assert 'chat_cache_requests_total{result="error"}' in (await c.get("/metrics")).text

            redis_server.start()
            deadline = time.monotonic() + 5
            while (await c.get("/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, "ready did not recover"
                await asyncio.sleep(0.05)
            b2 = body(content=unique("after"))
            assert (await c.post("/v1/chat/completions", json=b2)).headers["x-cache"] == "MISS"
            deadline = time.monotonic() + 3
            while (await c.post("/v1/chat/completions", json=b2)).headers["x-cache"] != "HIT":
                assert time.monotonic() < deadline, "the cache was not used again after Redis came back"
                await asyncio.sleep(0.02)
    finally:
        server.stop()
        redis_server.stop()
