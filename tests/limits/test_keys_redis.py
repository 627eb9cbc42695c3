"""The limiter when its Redis goes away: fail open or closed, counted once per outage, and
/health/ready says so; it counts again once Redis is back. (Logged once per outage: the process
test in test_keys_replicas.py reads a real process's log.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from app.config.settings import settings_from_dict
from tests.conftest import RedisServer, ServerThread
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.keys_config import ENV, auth, keys_settings_dict
from tests.helpers.sse import chat_body

CHAT = "/v1/chat/completions"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def limited_server(fake: FakeProvider, redis: RedisServer, mode: str) -> ServerThread:
    sections = {
        "rate_limit": {"backend": "redis", "on_backend_error": mode, "op_timeout_s": 0.2},
        "redis": {"url": redis.url},
    }
    return ServerThread(settings_from_dict(keys_settings_dict(fake, **sections), ENV), environ=ENV).start()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_killed_fails_open_or_closed_once_per_outage(
    mode: str, fake_provider: FakeProvider, redis: RedisServer
) -> None:
    server = limited_server(fake_provider, redis, mode)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            if time.time() % 60 > 50:
                await asyncio.sleep(61 - time.time() % 60)
            ok = await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))
            assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "2"
            assert (await c.get("/health/ready")).status_code == 200
            redis.stop()
            statuses = [
                (await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))).status_code for _ in range(5)
            ]
            if mode == "open":
                assert statuses == [200] * 5  # uncounted: more than the key's 3 a minute get through
            else:
                assert statuses == [429] * 5
            ready = await c.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["rate_limit"] == "unavailable"
            metrics = (await c.get("/metrics")).text
            assert "chat_rate_limit_backend_outages_total 1.0" in metrics
            redis.start()
            deadline = time.monotonic() + 10
            while (await c.get("/health/ready")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            # Counting again (the restarted Redis starts empty) once the next probe finds it.
            while (
                "x-ratelimit-remaining-requests"
                not in (back := await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))).headers
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert back.status_code == 200 and back.headers["x-ratelimit-remaining-requests"] == "2"
    finally:
        server.stop()


async def test_a_redis_that_stops_answering_costs_requests_the_timeout_only_once_in_a_while(
    fake_provider: FakeProvider, redis: RedisServer
) -> None:
    import signal

    server = limited_server(fake_provider, redis, "open")
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            assert (await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))).status_code == 200
            redis.proc.send_signal(signal.SIGSTOP)  # alive but silent: every call would wait op_timeout_s
            try:
                started = time.monotonic()
                for _ in range(10):
                    assert (await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))).status_code == 200
                elapsed = time.monotonic() - started
            finally:
                redis.proc.send_signal(signal.SIGCONT)
            # 10 x 0.2 s and more if each waited; with one probe per 0.5 s, a few waits at most (on a
            # loaded machine the requests' own time lets a third or fourth probe in).
            assert elapsed < 2.0, elapsed
    finally:
        server.stop()
