"""The memory resume store's bounds, in-process: events per log, total bytes, expiry after the end."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from app.config.settings import StreamingSettings
from app.domain.chunks import Chunk
from app.domain.errors import InvalidResumePosition, ResumeUnavailable, StreamNotFound
from app.domain.events import StreamEvent
from app.resume.log import EVENT_OVERHEAD, StreamLog
from app.resume.memory import MemoryResumeStore, auto_budget_mb
from app.resume.replay import Replay
from app.resume.service import Resumes


def chunk(seq: int, size: int = 100) -> StreamEvent:
    return StreamEvent(seq, Chunk(raw=b"x" * size))


def fill(log: StreamLog, chunks: int, size: int = 100) -> None:
    for seq in range(1, chunks + 1):
        log.append(chunk(seq, size))
    log.append(StreamEvent(chunks + 1))


def test_a_log_keeps_its_last_max_events_and_accounts_for_them() -> None:
    store = MemoryResumeStore(ttl_s=60, max_events=5, budget_bytes=1 << 30)
    log = store.begin("s1", "owner")
    fill(log, 9)
    assert (log.first_seq, log.last_seq, log.held) == (6, 10, 5)
    assert log.after(5) is not None and log.after(5).seq == 6  # type: ignore[union-attr]
    with pytest.raises(LookupError):
        log.after(3)
    assert store.bytes == log.size == 4 * (EVENT_OVERHEAD + 100) + EVENT_OVERHEAD


async def test_resume_before_a_trimmed_start_or_past_the_end_is_409_and_another_owner_404() -> None:
    settings = StreamingSettings(resume_max_events=5)
    resumes = Resumes(settings, MemoryResumeStore(60, 5, 1 << 30))
    log = resumes.local.begin("ab", "owner")
    fill(log, 9)
    with pytest.raises(InvalidResumePosition):
        await resumes.open("ab", "owner", "ab:2")
    with pytest.raises(InvalidResumePosition):
        await resumes.open("ab", "owner", "ab:11")  # an ended log: no wait
    with pytest.raises(StreamNotFound):
        await resumes.open("ab", "someone else", "ab:6")
    replay = await resumes.open("ab", "owner", "ab:5")
    assert [replay.take().seq for _ in range(5)] == [6, 7, 8, 9, 10]  # type: ignore[union-attr]


class _UntrustedCopy:
    """A shared store whose copy of every log is broken (a failed flush to Redis)."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def begin(self, log: StreamLog) -> None: ...

    def check_available(self, log: StreamLog | None) -> None:
        if log is not None:
            raise ResumeUnavailable("the shared copy cannot be trusted")

    async def open(self, stream_id: str, owner: str, after_seq: int) -> Replay:
        self.looked_up.append(stream_id)
        raise StreamNotFound("not in the shared store (or not yours)")

    async def stop(self, stream_id: str, owner: str) -> bool:
        return False

    async def health(self) -> bool:
        return False

    async def close(self) -> None: ...


async def test_another_keys_stream_is_a_404_before_anything_else_is_said_of_it() -> None:
    """Whose a stream is comes first: another key learns nothing of it, not even that its shared
    copy is broken (a 503 would say the stream exists)."""
    shared = _UntrustedCopy()
    resumes = Resumes(StreamingSettings(resume_max_events=5), MemoryResumeStore(60, 5, 1 << 30), shared)
    fill(resumes.local.begin("cd", "owner"), 3)
    with pytest.raises(StreamNotFound):
        await resumes.open("cd", "someone else", None)
    # Answered as an unknown stream is: through the shared store (its round trip, its timing).
    with pytest.raises(StreamNotFound):
        await resumes.open("ef", "someone else", None)
    assert shared.looked_up == ["cd", "ef"]
    with pytest.raises(ResumeUnavailable):
        await resumes.open("cd", "owner", None)


def test_over_budget_the_oldest_ended_logs_go_first() -> None:
    per_log = 10 * (EVENT_OVERHEAD + 1000) + EVENT_OVERHEAD
    store = MemoryResumeStore(ttl_s=60, max_events=100, budget_bytes=3 * per_log)
    live = store.begin("live", "o")
    for seq in range(1, 11):
        live.append(chunk(seq, 1000))
    for name in ("a", "b", "c"):
        fill(store.begin(name, "o"), 10, 1000)
    assert store.bytes <= store.budget
    assert store.get("a") is None  # the oldest ended log made room
    assert store.get("c") is not None and store.get("live") is not None
    assert store.bytes == sum(log.size for log in store._logs.values())


def test_a_full_store_under_steady_load_drops_just_enough_of_the_oldest_ended_logs() -> None:
    # The steady state of a busy gateway: the store is at its budget and every append of a new
    # stream makes room. Only ended logs from the front go, as many as the new events need; a
    # live log there is kept (and looked at again after the others).
    per_log = 3 * (EVENT_OVERHEAD + 100) + EVENT_OVERHEAD
    store = MemoryResumeStore(ttl_s=600, max_events=100, budget_bytes=2000 * per_log + 10)
    early_live = store.begin("early-live", "o")
    early_live.append(chunk(1))
    for i in range(2000):
        fill(store.begin(f"ended-{i}", "o"), 3)
    assert store.bytes <= store.budget and len(store) < 2001  # some of the oldest made room already
    dropped_before = 2001 - len(store)
    new = store.begin("new", "o")
    for seq in range(1, 31):
        new.append(chunk(seq))
    dropped = 2001 + 1 - len(store) - dropped_before
    needed = 30 * (EVENT_OVERHEAD + 100)  # less the room the store had left, which is under one log
    assert needed - per_log <= dropped * per_log < needed + per_log
    assert store.get("early-live") is early_live and store.get("new") is new
    assert store.bytes == sum(log.size for log in store._logs.values()) <= store.budget


def test_over_budget_with_only_live_logs_the_growing_one_drops_its_oldest_events() -> None:
    store = MemoryResumeStore(ttl_s=60, max_events=1000, budget_bytes=20 * (EVENT_OVERHEAD + 1000))
    log = store.begin("big", "o")
    for seq in range(1, 200):
        log.append(chunk(seq, 1000))
        assert store.bytes <= store.budget + EVENT_OVERHEAD + 1000
    assert log.last_seq == 199 and log.first_seq > 1


def test_logs_expire_ttl_after_their_end() -> None:
    store = MemoryResumeStore(ttl_s=0.05, max_events=100, budget_bytes=1 << 30)
    fill(store.begin("old", "o"), 3)
    live = store.begin("live", "o")
    live.append(chunk(1))
    time.sleep(0.06)
    assert store.get("live") is not None  # a live stream never expires
    assert store.get("old") is None
    fill(store.begin("older", "o"), 3)
    store._logs["older"].ended_at -= 1.0
    assert store.sweep() == 1  # "old" was dropped by the lookup already
    assert set(store._logs) == {"live"} and store.bytes == live.size


async def test_expired_logs_are_swept_on_a_timer_without_new_streams() -> None:
    store = MemoryResumeStore(ttl_s=0.05, max_events=100, budget_bytes=1 << 30, sweep_every_s=0.02)
    for i in range(50):
        fill(store.begin(f"s{i}", "o"), 3)
    assert store.bytes > 0
    deadline = time.monotonic() + 5
    while store.bytes and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert (store.bytes, len(store)) == (0, 0)
    store.close()


class _Shared:
    def __init__(self, broken: bool) -> None:
        self.broken = broken

    def append(self, event: StreamEvent) -> None:
        return None

    async def readers_elsewhere(self) -> bool:
        return False


def test_with_a_shared_store_an_ended_log_is_dropped_at_once_unless_its_copy_is_broken() -> None:
    store = MemoryResumeStore(ttl_s=600, max_events=100, budget_bytes=1 << 30, keep_ended=False)
    kept, broken, live = store.begin("kept", "o"), store.begin("broken", "o"), store.begin("live", "o")
    kept.shared, broken.shared = _Shared(False), _Shared(True)
    fill(kept, 5)
    fill(broken, 5)
    live.append(chunk(1))
    assert store.get("kept") is None  # Redis has it: a resume reads it there, as on any replica
    assert store.get("broken") is broken  # kept, so that its resumes keep answering 503
    assert store.get("live") is live
    assert store.bytes == broken.size + live.size
    assert kept.after(0) is not None  # a reader that already holds the log reads on


def test_the_auto_memory_budget_is_a_share_of_the_machine_within_bounds() -> None:
    assert auto_budget_mb(256 * 1024 * 1024) == 8
    assert auto_budget_mb(1024 * 1024 * 1024) == 32
    assert auto_budget_mb(64 * 1024**3) == 64
    assert 8 <= auto_budget_mb() <= 64


def test_an_ended_log_leaves_the_collector_two_objects_to_walk() -> None:
    # Ended logs are kept for ttl_s (300 s by default: hundreds of thousands of them at a busy
    # worker), and each object of theirs the collector tracks is walked by every collection of its
    # generation all that time: the log and its deque, not a callback, an event or a chunk per log.
    store = MemoryResumeStore(ttl_s=60, max_events=100, budget_bytes=1 << 30)
    gc.collect()
    before = len(gc.get_objects())
    logs = [store.begin(f"s{i}", "owner") for i in range(200)]
    for log in logs:
        fill(log, 20)
    del log
    assert all(log.ended for log in logs)
    gc.collect()
    assert len(gc.get_objects()) - before <= 2 * len(logs) + 1  # + the list holding them
