"""Resumable streams with the Redis store: across replicas, and with Redis going away mid-stream.

Two gateways on one Redis stand for two replicas: first two in-process servers (fast), then two
real `python -m app` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config.settings import StreamingSettings, settings_from_dict
from app.domain.chunks import Chunk
from app.domain.errors import ResumeUnavailable, StreamNotFound
from app.domain.events import StreamEvent
from app.resume.log import StreamLog
from app.resume.redis_store import BLOCK_MS, RedisResumeStore
from loadtests.processes import GatewayProcess
from tests.conftest import TEST_STREAMING, RedisServer, ServerThread, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.sse import chat_body
from tests.resume.test_resume import KEY_A, KEY_B, A, B, Reader, frames, resume, seq_of

WAIT_S = 10.0
GRACE_S = 1.5
REPLICA_SLOW = Behaviour(content=[f" r{i}" for i in range(12)], gap_s=0.15)  # ~1.8 s


def redis_server(fake: FakeProvider, url: str, **streaming: Any) -> ServerThread:
    environ = {"GW_KEYS": f"{KEY_A},{KEY_B}"}
    data = settings_dict(
        fake.base_url,
        streaming={**TEST_STREAMING, "detach_grace_s": GRACE_S, "resume_store": "redis", **streaming},
        server={"api_keys_env": "GW_KEYS"},
        redis={"url": url},
    )
    return ServerThread(settings_from_dict(data, environ=environ), environ=environ).start()


@pytest.fixture(scope="module")
def replicas(fake_provider: FakeProvider, redis_url: str) -> Iterator[tuple[ServerThread, ServerThread]]:
    a = redis_server(fake_provider, redis_url)
    b = redis_server(fake_provider, redis_url)
    yield a, b
    a.stop()
    b.stop()


async def test_resume_on_another_replica_during_and_after_generation(
    replicas: tuple[ServerThread, ServerThread], fake: FakeProvider
) -> None:
    a, b = replicas
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        body = chat_body("slow_gap", stream=True)
        async with http.stream("POST", f"{a.base_url}/v1/chat/completions", json=body, headers=A) as r:
            sid = r.headers["x-stream-id"]
            first = await Reader(r).take(2)
        # Left A; resume on B while A is still generating (the grace keeps it going).
        during = await http.get(
            f"{b.base_url}/v1/chat/completions/streams/{sid}", headers={**A, "Last-Event-ID": f"{sid}:2"}
        )
        assert during.status_code == 200, during.text
        rest = frames(during.content)
        assert [seq_of(f) for f in first + rest] == list(range(1, len(first + rest) + 1))
        assert rest[-1].endswith(b"data: [DONE]\n\n")
        # After the end, from the start, on B: byte for byte what A's client got and the rest.
        after = await http.get(f"{b.base_url}/v1/chat/completions/streams/{sid}", headers=A)
        assert frames(after.content) == first + rest
        # The other key still gets a 404 on B; a position past the end a 409.
        assert (await http.get(f"{b.base_url}/v1/chat/completions/streams/{sid}", headers=B)).status_code == 404
        past = await http.get(
            f"{b.base_url}/v1/chat/completions/streams/{sid}", headers={**A, "Last-Event-ID": f"{sid}:99"}
        )
        assert past.status_code == 409
    assert fake.calls("slow_gap") == 1
    assert fake.requests[0].completed_at is not None


async def test_a_reader_on_another_replica_keeps_the_stream_past_the_grace(
    replicas: tuple[ServerThread, ServerThread], fake: FakeProvider
) -> None:
    a, b = replicas
    """slow_gap runs ~3 s: past A's grace (1.5 s) only because B's follower says it is reading."""
    long_body = chat_body("slow_gap", stream=True)
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        async with http.stream("POST", f"{a.base_url}/v1/chat/completions", json=long_body, headers=A) as r:
            sid = r.headers["x-stream-id"]
            await Reader(r).take(1)
        started = time.monotonic()
        got = await http.get(f"{b.base_url}/v1/chat/completions/streams/{sid}", headers=A)
        assert frames(got.content)[-1].endswith(b"data: [DONE]\n\n")
        assert time.monotonic() - started > 0.5
    assert fake.requests[0].completed_at is not None


async def test_delete_on_another_replica_stops_the_stream(
    replicas: tuple[ServerThread, ServerThread], fake: FakeProvider
) -> None:
    a, b = replicas
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        async with http.stream(
            "POST", f"{a.base_url}/v1/chat/completions", json=chat_body("slow_gap", stream=True), headers=A
        ) as r:
            sid = r.headers["x-stream-id"]
            reader = Reader(r)
            await reader.take(1)
            await asyncio.sleep(0.2)  # the first batch reaches Redis
            gone = await http.delete(f"{b.base_url}/v1/chat/completions/streams/{sid}", headers=A)
            assert gone.status_code == 204
            rest = await reader.rest()
        assert b"stream_cancelled" in rest[-1]
    await fake.await_disconnect(fake.requests[0], timeout=3)


async def test_redis_stopped_mid_stream_live_client_finishes_and_resume_is_503(fake: FakeProvider) -> None:
    redis = RedisServer().start()
    server = redis_server(fake, redis.url)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S) as http:
            body = chat_body("slow_gap", stream=True)
            async with http.stream("POST", "/v1/chat/completions", json=body, headers=A) as r:
                sid = r.headers["x-stream-id"]
                reader = Reader(r)
                await reader.take(1)
                redis.stop()
                rest = await reader.rest()
            assert rest[-1].endswith(b"data: [DONE]\n\n")  # the live client lost nothing
            got = await resume(http, sid, None)
            assert got.status_code == 503, got.text
            assert got.json()["error"]["code"] == "resume_store_unavailable"
            assert server.app.state.metrics.resumes[("unavailable",)] == 1  # this server's one resume
            # Another key learns nothing of the stream: it gets what a stream id nobody knows gets.
            for method in ("GET", "DELETE"):
                url = "/v1/chat/completions/streams/{}"
                theirs = await http.request(method, url.format(sid), headers=B)
                unknown = await http.request(method, url.format("f" * 32), headers=B)
                assert (theirs.status_code, theirs.json()["error"]["code"]) == (
                    unknown.status_code,
                    unknown.json()["error"]["code"],
                ), method
            # New streams still work, and the process is fine.
            ok = await http.post("/v1/chat/completions", json=chat_body("normal", stream=True), headers=A)
            assert ok.status_code == 200 and frames(ok.content)[-1].endswith(b"[DONE]\n\n")
            assert (await http.get("/health/live")).status_code == 200
            assert (await http.get("/health/ready")).status_code == 503
    finally:
        server.stop()
        redis.stop()


# -- two real processes ----------------------------------------------------------------------------


def replica(tmp: Path, name: str, fake: FakeProvider, redis_url: str) -> GatewayProcess:
    config = (
        '[server]\napi_keys_env = "GW_KEYS"\n\n'
        f'[streaming]\nstatus_window_s = 0.2\ndetach_grace_s = {GRACE_S}\nresume_store = "redis"\n\n'
        f'[redis]\nurl = "{redis_url}"\n\n'
        f'[[models.deployments]]\nname = "replica_slow"\nlitellm_model = "openai/replica_slow"\n'
        f'api_base = "{fake.base_url}"\n'
    )
    return GatewayProcess(tmp, config, {"GW_KEYS": f"{KEY_A},{KEY_B}"}, name=name)


async def test_two_processes_on_one_redis(tmp_path: Path, fake: FakeProvider, redis_url: str) -> None:
    fake.set_behaviour("replica_slow", REPLICA_SLOW)
    a = replica(tmp_path, "a", fake, redis_url)
    b = replica(tmp_path, "b", fake, redis_url)
    try:
        a.wait_ready(90)
        b.wait_ready(90)
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            body = chat_body("replica_slow", stream=True)
            async with http.stream("POST", f"{a.base_url}/v1/chat/completions", json=body, headers=A) as r:
                sid = r.headers["x-stream-id"]
                first = await Reader(r).take(3)
            during = await http.get(
                f"{b.base_url}/v1/chat/completions/streams/{sid}", headers={**A, "Last-Event-ID": f"{sid}:3"}
            )
            assert during.status_code == 200
            rest = frames(during.content)
            assert rest[-1].endswith(b"data: [DONE]\n\n")
            assert [seq_of(f) for f in first + rest] == list(range(1, len(first + rest) + 1))
            after = await http.get(f"{b.base_url}/v1/chat/completions/streams/{sid}", headers=A)
            assert frames(after.content) == first + rest
            text = "".join(
                (c["choices"][0]["delta"].get("content") or "")
                for f in first + rest
                if b"[DONE]" not in f and (c := json.loads(f.split(b"data: ", 1)[1]))["choices"]
            )
            assert text == "".join(REPLICA_SLOW.content)
        assert fake.calls("replica_slow") == 1
    finally:
        a.stop()
        b.stop()


async def test_a_stalled_redis_never_slows_the_live_stream(fake: FakeProvider) -> None:
    """Redis SIGSTOPped mid-stream (it accepts, never answers): chunks keep their pace, the store
    gives up within its op bound, and resumes answer 503 until it is back."""
    import signal

    redis = RedisServer().start()
    server = redis_server(fake, redis.url)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S) as http:
            async with http.stream(
                "POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True), headers=A
            ) as r:
                sid = r.headers["x-stream-id"]
                reader = Reader(r)
                await reader.take(1)
                # Timed from event 1: event 2's append is the first to meet the stopped Redis, so
                # a live stream that waited on it would stretch the 1 -> 2 gap alone.
                arrivals = [time.monotonic()]
                os.kill(redis.proc.pid, signal.SIGSTOP)
                while True:
                    event = await reader.take(1)
                    arrivals.append(time.monotonic())
                    if event[0].endswith(b"[DONE]\n\n"):
                        break
            gaps = [b - a for a, b in itertools.pairwise(arrivals)]
            # slow_gap's 0.3 s pace, never Redis's stall (its op bound, 0.5 s, on top of the pace).
            # The 1 -> 2 gap is where a stall would show: the pace and a small margin. One later gap
            # may stretch a little on a loaded machine.
            assert gaps[0] < 0.3 + 0.2, gaps
            assert max(gaps) < 0.3 + 0.45, gaps
            assert sum(gap > 0.3 + 0.15 for gap in gaps) <= 1, gaps
            got = await resume(http, sid, None)
            assert got.status_code == 503
        os.kill(redis.proc.pid, signal.SIGCONT)
    finally:
        with contextlib.suppress(Exception):
            os.kill(redis.proc.pid, signal.SIGCONT)
        server.stop()
        redis.stop()


async def test_a_stream_id_naming_another_key_of_the_store_is_404(
    replicas: tuple[ServerThread, ServerThread], fake: FakeProvider
) -> None:
    """``<id>:meta`` was a 503 (WRONGTYPE: the meta hash read as a stream); ids are checked first."""
    a, b = replicas
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        response = await http.post(
            f"{a.base_url}/v1/chat/completions", json=chat_body("normal", stream=True), headers=A
        )
        sid = response.headers["x-stream-id"]
        for server in (a, b):
            for suffix in (":meta", ":readers", "%3Ameta", ":meta:meta"):
                url = f"{server.base_url}/v1/chat/completions/streams/{sid}{suffix}"
                got = await http.get(url, headers=A)
                assert got.status_code == 404, (suffix, got.text)
                assert got.json()["error"]["code"] == "stream_not_found"
                assert (await http.delete(url, headers=A)).status_code == 404
            whole = await http.get(f"{server.base_url}/v1/chat/completions/streams/{sid}", headers=A)
            assert whole.status_code == 200


async def test_a_messages_stream_replays_its_anthropic_events_on_another_replica(
    replicas: tuple[ServerThread, ServerThread], fake: FakeProvider
) -> None:
    a, b = replicas
    body = {"model": "normal", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        original = await http.post(f"{a.base_url}/v1/messages", json=body, headers=A)
        assert original.status_code == 200
        sid = original.headers["x-stream-id"]
        assert original.content.startswith(b"event: message_start\nid: ")

        async def replayed() -> httpx.Response:
            return await http.get(f"{b.base_url}/v1/chat/completions/streams/{sid}", headers=A)

        # The log reaches Redis a moment after the stream ends (the flusher): wait for its whole end.
        deadline = time.monotonic() + WAIT_S
        while (again := await replayed()).content != original.content and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert again.content == original.content  # Anthropic's named events, byte for byte


async def test_blocking_reads_on_a_replica_are_bounded(redis_url: str) -> None:
    """Each resumer following a stream from another replica holds a Redis connection while it reads:
    at most ``max_blocking_reads`` at once; the others wait their turn as if nothing had come, rather
    than opening connections until Redis refuses them (and trips the breaker every feature shares)."""
    store = RedisResumeStore(redis_url, StreamingSettings(), on_stop=lambda _sid: None, max_blocking_reads=2)
    try:
        started = time.monotonic()
        reads = await asyncio.gather(*(store.read_after("e" * 32, 0) for _ in range(6)))
        assert reads == [[]] * 6
        assert time.monotonic() - started < 3 * BLOCK_MS / 1000  # none waited longer than a read's turn
        pool = store._blocking.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
    finally:
        await store.close()


# -- a copy that broke, a DELETE that met no subscriber (two stores on one Redis: two replicas) -------


async def _until(check: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _chunk(seq: int) -> StreamEvent:
    return StreamEvent(seq, Chunk(raw=b'{"n":%d}' % seq))


def _store(url: str, on_stop: Callable[[str], None] = lambda _sid: None) -> RedisResumeStore:
    return RedisResumeStore(url, StreamingSettings(), on_stop=on_stop)


@contextlib.asynccontextmanager
async def _running_on(a: RedisResumeStore, b: RedisResumeStore) -> AsyncIterator[tuple[str, StreamLog]]:
    """A stream running on replica ``a`` whose first event replica ``b`` can already read; both
    stores are closed at the end."""
    sid = os.urandom(16).hex()
    try:
        log = StreamLog(sid, "owner", 100)
        a.begin(log)
        log.append(_chunk(1))
        await _until(lambda: _opens(b, sid))
        yield sid, log
    finally:
        for store in (a, b):
            await store.close()


async def test_a_copy_whose_last_flush_failed_is_a_503_on_the_other_replicas() -> None:
    """The running replica's final flush meets a stalled Redis: its copy in Redis stops short of the
    end. Once Redis answers again the copy is marked broken, so a resume on another replica is a 503
    at once, not a replay up to the hole followed by a wait for the stall bound (over a minute)."""
    import signal

    redis = RedisServer().start()
    b = _store(redis.url)
    try:
        async with _running_on(_store(redis.url), b) as (sid, log):
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                log.append(_chunk(2))
                log.append(StreamEvent(3))  # the end
                await _until(_true_when(lambda: log.shared is not None and log.shared.broken))
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            started = time.monotonic()
            with pytest.raises(ResumeUnavailable):
                await _until(lambda: _opens(b, sid, fails=True))
                await b.open(sid, "owner", 0)
            assert time.monotonic() - started < 8  # a probe, then the liveness loop's next turn
            with pytest.raises(StreamNotFound):  # another key's stream is still a 404 first
                await b.open(sid, "someone else", 0)
    finally:
        redis.stop()


async def test_a_follower_on_another_replica_ends_with_a_503_once_the_copy_is_marked_broken(redis_url: str) -> None:
    a, b = _store(redis_url), _store(redis_url)
    async with _running_on(a, b) as (sid, log):
        replay = await b.open(sid, "owner", 0)
        assert log.shared is not None
        log.shared.mark_broken()  # as a failed flush does
        await a._mark_broken()
        started, events = time.monotonic(), []
        while not events or events[-1].chunk is not None:
            assert time.monotonic() - started < WAIT_S
            await replay.wait()
            while (event := replay.take()) is not None:
                events.append(event)
        assert [e.seq for e in events] == [1, 2]
        assert isinstance(events[-1].error, ResumeUnavailable)
        assert "could not be kept" in events[-1].error.message


class _Deaf(RedisResumeStore):
    """A replica whose stop subscription is down until ``hearing`` is set (a reconnect under way, or,
    never set, a connection silently dead)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hearing = asyncio.Event()

    async def _listen_for_stops(self) -> None:
        await self.hearing.wait()
        await super()._listen_for_stops()


async def test_a_delete_published_while_the_running_replica_resubscribes_still_stops_it(redis_url: str) -> None:
    """Redis's pub/sub keeps nothing for a subscriber that is away: a DELETE on another replica while
    the running replica's subscription is down would be lost. The stop key it leaves is read when the
    subscription is up again."""
    stopped: list[str] = []
    # No sweep of the stop keys during the test: the subscription alone must find it.
    a = _Deaf(redis_url, StreamingSettings(), on_stop=stopped.append, stop_sweep_s=3600)
    b = _store(redis_url)
    async with _running_on(a, b) as (sid, log):
        assert await b.stop(sid, "owner")  # published while nobody of A's listens
        await asyncio.sleep(0.2)
        assert stopped == []
        a.hearing.set()
        await _until(_true_when(lambda: stopped == [sid]), timeout=5)
        # A stream that ended is not looked up again when the subscription comes back.
        log.append(StreamEvent(2))
        assert sid not in a._running


async def test_a_replica_whose_subscription_is_silently_dead_still_gets_its_stops(redis_url: str) -> None:
    """A half-open connection never errors: the listener would wait on it for good. The liveness loop
    looks up the running streams' stop keys every ``stop_sweep_s`` anyway."""
    stopped: list[str] = []
    a = _Deaf(redis_url, StreamingSettings(), on_stop=stopped.append, stop_sweep_s=0.5)
    b = _store(redis_url)
    async with _running_on(a, b) as (sid, _log):
        assert await b.stop(sid, "owner")
        await _until(_true_when(lambda: stopped == [sid]), timeout=6)


async def _opens(store: RedisResumeStore, sid: str, *, fails: bool = False) -> bool:
    try:
        (await store.open(sid, "owner", 0)).close()
    except StreamNotFound:
        return False
    except ResumeUnavailable:
        return fails
    return not fails


def _true_when(check: Any) -> Any:
    async def probe() -> bool:
        return bool(check())

    return probe
