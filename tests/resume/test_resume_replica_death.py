"""A resumer is never left in silence (API.md 1.3): two real `python -m app` replicas on a private
redis-server; a resume on B of a stream that runs on A gets heartbeats through A's silences, and when
A is SIGKILLed the stream is ended in its log within 10 s with a 502 ``upstream_unavailable``, which
every later resume gets at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from loadtests.processes import GatewayProcess
from tests.conftest import REDIS_TEST_DB, RedisServer
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.sse import chat_body
from tests.resume.test_resume import KEY_A, A

HEARTBEAT_S = 1.0
#: API.md 1.3: a dead producer's stream is ended in its log within this bound.
DEATH_BOUND_S = 10.0
#: Chunks 4 s apart: silences longer than the heartbeat period, and a stream that outlives the test.
SILENT = Behaviour(content=[f" s{i}" for i in range(40)], gap_s=4.0)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def wait_logged(server: RedisServer, stream_id: str) -> None:
    """Until the stream's first event is in Redis: the producer writes it a moment after its client
    got it, and a replica killed before that leaves nothing to resume (a 404, not what is tested)."""
    client = redis.Redis(port=server.port, db=REDIS_TEST_DB)
    try:
        deadline = time.monotonic() + 10
        while not client.xlen(f"chat:resume:{stream_id}"):
            assert time.monotonic() < deadline, "the stream's first event never reached Redis"
            time.sleep(0.02)
    finally:
        client.close()


def replica(tmp: Path, name: str, fake: FakeProvider, redis_url: str) -> GatewayProcess:
    config = (
        '[server]\napi_keys_env = "GW_KEYS"\n\n'
        f"[streaming]\nstatus_window_s = 0.2\nheartbeat_s = {HEARTBEAT_S}\ndetach_grace_s = 60\n"
        f'resume_store = "redis"\n\n[redis]\nurl = "{redis_url}"\n\n'
        f'[[models.deployments]]\nname = "silent_replica"\nlitellm_model = "openai/silent_replica"\n'
        f'api_base = "{fake.base_url}"\n'
    )
    return GatewayProcess(tmp, config, {"GW_KEYS": KEY_A, "CHAT_SERVER__LOG_LEVEL": "info"}, name=name)


async def test_a_resumer_of_a_dead_replica_hears_heartbeats_then_its_end(
    tmp_path: Path, fake: FakeProvider, private_redis: RedisServer
) -> None:
    fake.set_behaviour("silent_replica", SILENT)
    a = replica(tmp_path, "a", fake, private_redis.url)
    b = replica(tmp_path, "b", fake, private_redis.url)
    try:
        a.wait_ready(90)
        b.wait_ready(90)
        async with httpx.AsyncClient(timeout=30) as http:
            body = chat_body("silent_replica", stream=True)
            async with http.stream("POST", f"{a.base_url}/v1/chat/completions", json=body, headers=A) as r:
                sid = r.headers["x-stream-id"]
                async for line in r.aiter_lines():
                    if line.startswith("id: "):
                        break  # one event; then leave (the grace keeps the stream going on A)
            wait_logged(private_redis, sid)
            url = f"{b.base_url}/v1/chat/completions/streams/{sid}"
            lines: list[tuple[float, str]] = []
            killed_at = 0.0
            async with http.stream("GET", url, headers={**A, "Last-Event-ID": f"{sid}:1"}) as resumed:
                assert resumed.status_code == 200
                async for line in resumed.aiter_lines():
                    now = time.monotonic()
                    lines.append((now, line))
                    beats = [t for t, text in lines if text == ": keep-alive"]
                    if not killed_at and len(beats) >= 3:
                        a.child.signal(signal.SIGKILL)  # the producer dies mid-stream
                        killed_at = now
                    assert now - (killed_at or now) < DEATH_BOUND_S + 5, "no end after the producer died"
            error_at, error = next((t, text) for t, text in lines if text.startswith("data: {"))
            beats = [t for t, text in lines if text == ": keep-alive"]
        # Heartbeats through the silences, before and after the kill, never HEARTBEAT_S apart by much.
        assert len(beats) >= 3
        writes = [t for t, text in lines if text]  # events and heartbeats alike
        assert max(later - earlier for earlier, later in itertools.pairwise(writes)) < HEARTBEAT_S + 1.5, lines
        detected = error_at - killed_at
        assert detected < DEATH_BOUND_S, f"ended {detected:.1f} s after the kill"
        assert any(text == "event: error" for _, text in lines)
        payload = json.loads(error.removeprefix("data: "))["error"]
        assert (payload["type"], payload["code"]) == ("upstream_error", "upstream_unavailable")
        print(f"dead replica: the resumer's error came {detected:.2f} s after SIGKILL")

        # The end is in the log: a later resume, from anywhere in it, ends at once.
        async with httpx.AsyncClient(timeout=30) as http:
            started = time.monotonic()
            later = await http.get(url, headers={**A, "Last-Event-ID": f"{sid}:1"})
            took = time.monotonic() - started
        assert later.status_code == 200
        assert b"upstream_unavailable" in later.content
        assert took < 1.0, f"a later resume took {took:.2f} s"
        assert any(e.get("event") == "resume_stream_orphaned" for e in b.log_events())
    finally:
        a.child.stop()
        b.child.stop()


async def test_a_resume_opened_after_the_replica_died_ends_at_once(
    tmp_path: Path, fake: FakeProvider, private_redis: RedisServer
) -> None:
    fake.set_behaviour("silent_replica", SILENT)
    a = replica(tmp_path, "a", fake, private_redis.url)
    b = replica(tmp_path, "b", fake, private_redis.url)
    try:
        a.wait_ready(90)
        b.wait_ready(90)
        async with httpx.AsyncClient(timeout=30) as http:
            body = chat_body("silent_replica", stream=True)
            async with http.stream("POST", f"{a.base_url}/v1/chat/completions", json=body, headers=A) as r:
                sid = r.headers["x-stream-id"]
                async for line in r.aiter_lines():
                    if line.startswith("id: "):
                        break
            wait_logged(private_redis, sid)
            a.child.signal(signal.SIGKILL)
            # Past the liveness key's life, nobody has followed the stream: the first resume finds the
            # replica gone and ends the log before it starts.
            await asyncio.sleep(DEATH_BOUND_S - 2)
            started = time.monotonic()
            resumed = await http.get(f"{b.base_url}/v1/chat/completions/streams/{sid}", headers=A)
            took = time.monotonic() - started
        assert resumed.status_code == 200
        assert resumed.content.rstrip().split(b"\n")[-1].startswith(b"data: {")
        assert b"upstream_unavailable" in resumed.content
        assert took < 1.0, f"the resume took {took:.2f} s"
    finally:
        a.child.stop()
        b.child.stop()
