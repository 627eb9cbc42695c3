"""The limiter when its Redis goes away: fail open or closed, counted once per outage, and
/health/ready says so; it counts again once Redis is back. (Logged once per outage: the process
test in test_keys_replicas.py reads a real process's log.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from app.config.settings import settings_from_dict
from loadtests.processes import RedisProcess
from tests.conftest import RedisServer, ServerThread
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.keys_config import ENV, KEYS, auth, keys_settings_dict
from tests.helpers.sse import chat_body

CHAT = "/v1/chat/completions"
OP_TIMEOUT_S = 0.2


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def limited_server(fake: FakeProvider, redis: RedisServer, mode: str) -> ServerThread:
    sections = {
        "rate_limit": {"backend": "redis", "on_backend_error": mode, "op_timeout_s": OP_TIMEOUT_S},
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
            took = []
            try:
                for _ in range(10):
                    started = time.monotonic()
                    assert (await c.post(CHAT, json=chat_body("normal"), headers=auth("rpm"))).status_code == 200
                    took.append(time.monotonic() - started)
            finally:
                redis.proc.send_signal(signal.SIGCONT)
            # A request that waited on Redis took the op bound (0.2 s); the others take a few ms. The
            # first waits, then the breaker refuses at once and lets one probe through per 0.5 s: a
            # few of the 10 wait at most (on a loaded machine the requests' own time lets a third in).
            waited = [t for t in took if t >= 0.8 * OP_TIMEOUT_S]
            assert len(waited) <= 3, took
    finally:
        server.stop()


async def test_a_websocket_request_left_during_its_admission_gives_its_slot_back(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """One stream a key; a socket closed while its request's admission was on its way to a stalled
    Redis: the script runs once Redis answers, and its lease is taken back before the next admission
    instead of holding the key's one slot until it lapses (30 s)."""
    redis = RedisProcess(tmp_path).start()
    sections = {"rate_limit": {"backend": "redis", "op_timeout_s": 2.0}, "redis": {"url": redis.url}}
    server: ServerThread | None = None
    try:
        server = ServerThread(settings_from_dict(keys_settings_dict(fake, **sections), ENV), environ=ENV).start()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            assert (await c.post(CHAT, json=chat_body("normal"), headers=auth("conc"))).status_code == 200
            redis.pause()
            async with connect(server.ws_url, subprotocols=["chat.v1", f"bearer.{KEYS['conc']}"]) as ws:  # type: ignore[list-item]
                frame = {"type": "chat.completion.create", "id": "a", "request": chat_body("normal")}
                await ws.send(json.dumps(frame))
                await asyncio.sleep(0.3)  # the admission is waiting on Redis; the socket goes
            await asyncio.sleep(0.2)
            redis.resume()
            deadline = time.monotonic() + 5
            while (r := await c.post(CHAT, json=chat_body("normal"), headers=auth("conc"))).status_code != 200:
                assert r.status_code == 429, r.text
                assert time.monotonic() < deadline, "the left request's lease still holds the key's one stream"
                await asyncio.sleep(0.1)
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            redis.stop()  # resumes a paused server first
