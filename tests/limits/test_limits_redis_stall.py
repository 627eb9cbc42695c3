"""A Redis stall under load (SIGSTOP on a real redis-server) never locks a key out afterwards: the
limiter fails open during the stall, and within a second of SIGCONT a key under its limits is
admitted again, though the admissions and settlements that timed out during the stall ran in Redis
when it resumed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from app.config.settings import settings_from_dict
from tests.conftest import RedisServer, ServerThread, settings_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body

KEY = "sk-stall-0123456789abcdef"
ENV = {"KEY_STALL": KEY}
STALL_S = 10.0
WORKERS = 32


@pytest.fixture
def stalled_redis() -> Iterator[RedisServer]:
    redis = RedisServer().start()
    yield redis
    os.kill(redis.proc.pid, signal.SIGCONT)  # never leave it stopped
    redis.stop()


async def test_no_refusals_within_a_second_of_a_redis_stall_ending(
    stalled_redis: RedisServer, fake_provider: FakeProvider
) -> None:
    data = settings_dict(fake_provider.base_url, rate_limit={"backend": "redis"}, redis={"url": stalled_redis.url})
    data["keys"] = [{"name": "stall", "key_env": "KEY_STALL", "concurrent_streams": WORKERS + 8, "budget_usd": 1e9}]
    server = ServerThread(settings_from_dict(data, ENV), environ=ENV).start()
    results: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def worker(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            r = await c.post(
                "/v1/chat/completions", json=chat_body("normal"), headers={"Authorization": f"Bearer {KEY}"}
            )
            results.append((time.monotonic(), r.status_code))

    try:
        limits = httpx.Limits(max_connections=WORKERS)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10, limits=limits) as c:
            tasks = [asyncio.create_task(worker(c)) for _ in range(WORKERS)]
            await asyncio.sleep(1.5)
            os.kill(stalled_redis.proc.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            await asyncio.sleep(STALL_S)
            os.kill(stalled_redis.proc.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            await asyncio.sleep(4.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
    finally:
        server.stop()
    during = [s for t, s in results if stopped_at <= t < resumed_at]
    after = [s for t, s in results if t >= resumed_at + 1.0]
    assert during and set(during) == {200}, f"fail-open refused during the stall: {sorted(set(during))}"
    assert len(after) > 100 and set(after) == {200}, (
        f"{sum(s == 429 for s in after)} of {len(after)} refused more than 1 s after the stall ended"
    )
