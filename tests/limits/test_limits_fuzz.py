"""Property-based fuzzing of what governs a key: random sequences of calls for one key, run a few at a
time, that complete, leave (mid-stream or right after the finish chunk), cancel, resume and DELETE
across SSE, WebSocket and JSON, on memory and Redis counters. After every sequence:

- the key was charged at least the tokens its clients were delivered ($1 a token: USD >= tokens);
- every lease and reservation is back (no call in flight holds anything);
- nothing was refused or failed (the key's limits are wide enough for what runs).

``FUZZ_EXAMPLES`` (default 12 per backend) bounds the sequences; CI's run is derandomised.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from app.config.settings import settings_from_dict
from tests.conftest import RedisServer, ServerThread, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.sse import chat_body
from tests.limits.test_charging import DOLLAR_A_TOKEN, TOKENS, in_flight_settles

KEY = "sk-fuzzkey-0123456789abcdef"
ENV = {"KEY_FUZZ": KEY}
HEADERS = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: What a client does with one call: complete it, leave after n content chunks, leave right after
#: the finish chunk, cancel (WebSocket) or DELETE (SSE) after n, or leave and resume after n.
ACTIONS = ("complete", "leave", "leave_after_finish", "stop", "resume")
TRANSPORTS = ("sse", "websocket", "json")
calls = st.tuples(st.sampled_from(TRANSPORTS), st.sampled_from(ACTIONS), st.integers(min_value=0, max_value=12))


@dataclass
class Ledger:
    """What the clients were delivered over the whole run, and the sequences tried."""

    delivered: int = 0
    charged_usd: float = 0.0
    sequences: int = 0
    calls: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module", params=["memory", "redis"])
def governed(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[tuple[ServerThread, Ledger]]:
    fake_provider.set_behaviour("metered_fuzz", Behaviour(content=TOKENS, usage_delay_s=0.3))
    redis = RedisServer().start() if request.param == "redis" else None
    sections: dict[str, Any] = {
        "rate_limit": {"backend": request.param},
        "streaming": {"detach_grace_s": 2.0, "resume_store": request.param},
    }
    if redis is not None:
        sections["redis"] = {"url": redis.url}
    data = settings_dict(fake_provider.base_url, **sections)
    data["models"]["deployments"].append(
        {"name": "metered_fuzz", "litellm_model": "openai/metered_fuzz", "api_base": fake_provider.base_url}
        | {"info": DOLLAR_A_TOKEN}
    )
    data["keys"] = [
        {"name": "fuzz", "key_env": "KEY_FUZZ", "budget_usd": 1e12, "budget_window": "total"}
        | {"concurrent_streams": 16, "tokens_per_minute": 10**9}
    ]
    server = ServerThread(settings_from_dict(data, ENV), environ=ENV).start()
    ledger = Ledger()
    yield server, ledger
    server.stop()
    if redis is not None:
        redis.stop()
    print(f"\nlimits fuzz [{request.param}]: {ledger}")  # the closing note's figures (pytest -s)


def _content(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def _sse(c: httpx.AsyncClient, action: str, n: int) -> int:
    body = chat_body("metered_fuzz", stream=True)
    seen = 0
    stream_id = ""
    async with c.stream("POST", CHAT, json=body, headers=HEADERS) as r:
        assert r.status_code == 200, await r.aread()
        stream_id = r.headers["x-stream-id"]
        last = ""
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                last = line[4:]
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            seen += _content(chunk)
            finished = bool(chunk.get("choices") and chunk["choices"][0].get("finish_reason"))
            if action == "leave_after_finish" and finished:
                return seen
            if action in ("leave", "stop", "resume") and seen >= n:
                break
        else:
            return seen
    if action == "stop":
        assert (await c.delete(f"{CHAT}/streams/{stream_id}", headers=HEADERS)).status_code == 204
    elif action == "resume":
        resumed = 0
        async with c.stream("GET", f"{CHAT}/streams/{stream_id}", headers=HEADERS | {"Last-Event-ID": last}) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    resumed += _content(json.loads(line[6:]))
        seen += resumed
    return seen


async def _websocket(server: ServerThread, action: str, n: int) -> int:
    seen = 0
    async with connect(server.ws_url, subprotocols=["chat.v1", f"bearer.{KEY}"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "f", "request": chat_body("metered_fuzz")}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "chat.completion.chunk":
                seen += _content(frame["chunk"])
                finished = bool(frame["chunk"].get("choices") and frame["chunk"]["choices"][0].get("finish_reason"))
                if action == "leave_after_finish" and finished:
                    return seen  # the socket closes with the usage still to come
                if action in ("leave", "resume") and seen >= n:
                    return seen
                if action == "stop" and seen == n:
                    await ws.send(json.dumps({"type": "chat.completion.cancel", "id": "f"}))
            else:
                assert frame["type"] == "chat.completion.done", frame
                return seen


async def _json(c: httpx.AsyncClient, action: str) -> int:
    if action == "complete":
        r = await c.post(CHAT, json=chat_body("metered_fuzz"), headers=HEADERS)
        assert r.status_code == 200, r.text
        return len(TOKENS)
    # Any other action on a JSON call: the client gives up before the answer (nothing delivered).
    try:
        await c.post(CHAT, json=chat_body("metered_fuzz"), headers=HEADERS, timeout=0.001)
    except httpx.TimeoutException:
        return 0
    return len(TOKENS)


async def _run(server: ServerThread, sequence: list[tuple[str, str, int]]) -> int:
    limit = asyncio.Semaphore(3)  # a few at a time: concurrency is what reservations must survive

    async def one(c: httpx.AsyncClient, transport: str, action: str, n: int) -> int:
        async with limit:
            if transport == "sse":
                return await _sse(c, action, n)
            if transport == "websocket":
                return await _websocket(server, action, n)
            return await _json(c, action)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as c:
        async with asyncio.timeout(60):
            delivered = await asyncio.gather(*(one(c, *call) for call in sequence))
    return sum(delivered)


@FUZZ
@given(sequence=st.lists(calls, min_size=1, max_size=6))
def test_random_call_sequences_keep_the_charge_and_the_counters(
    governed: tuple[ServerThread, Ledger], sequence: list[tuple[str, str, int]]
) -> None:
    server, ledger = governed
    metrics = server.app.state.metrics
    ledger.delivered += asyncio.run(_run(server, sequence))
    ledger.sequences += 1
    ledger.calls += len(sequence)
    for transport, action, _ in sequence:
        ledger.kinds[f"{transport}:{action}"] = ledger.kinds.get(f"{transport}:{action}", 0) + 1
    asyncio.run(in_flight_settles(server, "fuzz"))  # leases and reservations back to 0 (bounded wait)
    charged = ledger.charged_usd = metrics.spend.get(("fuzz", "metered_fuzz"), 0.0)
    assert charged >= ledger.delivered, f"charged ${charged} for {ledger.delivered} tokens delivered"
    assert metrics.rate_limits.get(("fuzz", "concurrency"), 0) == 0
