"""The memory resume store: this process's stream logs, bounded per stream and in total.

Logs are kept ``ttl_s`` after their stream ends: a timer sweeps the expired ones every
``SWEEP_EVERY_S`` (and a lookup never returns one), so memory comes back when load stops, not only
when new streams begin. Ended logs are kept in the order they ended, which with one ``ttl_s`` is the
order they expire in: a sweep looks only at the ones it drops, plus one.

With a shared store (``keep_ended=False``: Redis holds every replica's logs) an ended log is
dropped here at once: its readers already hold it, and a later resume reads Redis like a resume on
any other replica. Only a log whose Redis copy is broken is kept, so that its resumes keep
answering 503 rather than 404 until it expires.

The total size (``bytes``, the gauge ``chat_resume_memory_bytes``) stays under ``budget``: past it
the oldest ended logs go first, and if only live ones are left the growing log drops its own oldest
events (a resume from before them is a 409), so a burst of huge streams can never take the
process's memory.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict

from app.resume.log import StreamLog

#: How often expired logs are swept (a few lookups of the oldest ended logs each time).
SWEEP_EVERY_S = 1.0
#: The budget when ``streaming.resume_memory_mb`` is 0 (auto): this share of the memory the process
#: may use (its cgroup's limit, else the machine's), within the bounds below.
AUTO_SHARE = 1 / 32
AUTO_MIN_MB = 8
AUTO_MAX_MB = 64


def auto_budget_mb(limit_bytes: int | None = None) -> int:
    """``resume_memory_mb = 0``: a share of the memory available, between AUTO_MIN_MB and AUTO_MAX_MB."""
    limit = memory_limit() if limit_bytes is None else limit_bytes
    if limit <= 0:
        return AUTO_MAX_MB
    return int(min(AUTO_MAX_MB, max(AUTO_MIN_MB, limit * AUTO_SHARE // (1024 * 1024))))


def memory_limit() -> int:
    """Bytes this process may use: its cgroup v2 limit when there is one, else physical memory (0: unknown)."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            value = f.read().strip()
        if value.isascii() and value.isdigit():
            return int(value)
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class MemoryResumeStore:
    def __init__(
        self,
        ttl_s: float,
        max_events: int,
        budget_bytes: int,
        *,
        keep_ended: bool = True,
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self.ttl_s = ttl_s
        self.sweep_every_s = sweep_every_s
        self.max_events = max_events
        self.budget = budget_bytes
        self.keep_ended = keep_ended
        self.bytes = 0
        self._logs: OrderedDict[str, StreamLog] = OrderedDict()
        self._ended: OrderedDict[str, StreamLog] = OrderedDict()  # in the order they ended
        self._sweeper: asyncio.TimerHandle | None = None
        # One bound method for every log: a log outlives its stream by ``ttl_s``, and a method bound
        # per log would be one more object per log for the collector to walk all that time.
        self._grow_log = self._grew

    def __len__(self) -> int:
        return len(self._logs)

    def begin(self, stream_id: str, owner: str) -> StreamLog:
        if self._sweeper is None:
            self._start_sweeper()
        log = StreamLog(stream_id, owner, self.max_events, self._grow_log)
        self._logs[stream_id] = log
        return log

    def get(self, stream_id: str) -> StreamLog | None:
        log = self._logs.get(stream_id)
        if log is not None and self._expired(log, time.monotonic()):
            self._drop(stream_id)
            return None
        return log

    def _expired(self, log: StreamLog, now: float) -> bool:
        return log.ended and now - log.ended_at >= self.ttl_s

    def _drop(self, stream_id: str) -> None:
        log = self._logs.pop(stream_id, None)
        self._ended.pop(stream_id, None)
        if log is not None:
            self.bytes -= log.size
            log.stream = None
            log.release()

    def sweep(self) -> int:
        """Drop every expired log; how many were dropped."""
        now = time.monotonic()
        dropped = 0
        while self._ended:
            stream_id, log = next(iter(self._ended.items()))
            if not self._expired(log, now):
                break
            self._drop(stream_id)
            dropped += 1
        return dropped

    def _start_sweeper(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # used outside a loop (a script, a unit test): sweep() and get() still expire logs
        self._sweeper = loop.call_later(self.sweep_every_s, self._sweep_tick)

    def _sweep_tick(self) -> None:
        self._sweeper = None
        self.sweep()
        self._start_sweeper()

    def _grew(self, log: StreamLog, delta: int) -> None:
        self.bytes += delta
        if log.ended and log.stream_id not in self._ended and log.stream_id in self._logs:
            if self.keep_ended or (log.shared is not None and log.shared.broken):
                self._ended[log.stream_id] = log
            else:
                self._drop(log.stream_id)
                return
        if self.bytes > self.budget:
            self._evict(log)

    def _evict(self, growing: StreamLog) -> None:
        """Oldest ended logs first, until the total is under budget; then the growing log's own oldest.

        Called on an append (per chunk) once the store is full, which under steady load is every
        append: ended logs go in the order they ended (each looked at once); then, if only live logs
        are left, the growing one halves itself.
        """
        while self.bytes > self.budget and self._ended:
            stream_id = next(iter(self._ended))
            if self._ended[stream_id] is growing:
                break
            self._drop(stream_id)
        if self.bytes > self.budget:
            self.bytes -= growing.trim(growing.held // 2)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for stream_id in list(self._logs):
            self._drop(stream_id)
