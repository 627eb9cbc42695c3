"""The memory resume store: this process's stream logs, bounded per stream and in total.

Logs are kept ``ttl_s`` after their stream ends (checked when looked up, and swept a few at a
time whenever a stream begins: no timer per log). The total size (``bytes``, the gauge
``chat_resume_memory_bytes``) stays under ``budget``: past it the oldest ended logs go first, and
if only live ones are left the growing log drops its own oldest events (a resume from before them
is a 409), so a burst of huge streams can never take the process's memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from app.resume.log import StreamLog

#: Logs looked at per begin() for expiry: enough to keep up with any arrival rate (each begin
#: adds one), small enough to cost nothing.
SWEEP_STEP = 4


class MemoryResumeStore:
    def __init__(self, ttl_s: float, max_events: int, budget_bytes: int) -> None:
        self.ttl_s = ttl_s
        self.max_events = max_events
        self.budget = budget_bytes
        self.bytes = 0
        self._logs: OrderedDict[str, StreamLog] = OrderedDict()

    def __len__(self) -> int:
        return len(self._logs)

    def begin(self, stream_id: str, owner: str) -> StreamLog:
        self._sweep()
        log = StreamLog(stream_id, owner, self.max_events, self._grew)
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
        if log is not None:
            self.bytes -= log.size
            log.stream = None

    def _sweep(self) -> None:
        now = time.monotonic()
        for _ in range(min(SWEEP_STEP, len(self._logs))):
            stream_id, log = next(iter(self._logs.items()))
            if self._expired(log, now):
                self._drop(stream_id)
            else:
                self._logs.move_to_end(stream_id)  # live or fresh: look again after the others

    def _grew(self, log: StreamLog, delta: int) -> None:
        self.bytes += delta
        if self.bytes > self.budget:
            self._evict(log)

    def _evict(self, growing: StreamLog) -> None:
        """Oldest ended logs first, until the total is under budget; then the growing log's own oldest.

        Called on an append (per chunk) once the store is full, which under steady load is every
        append: so it looks only at the front of the store, one log at a time. Ended logs there are
        dropped; live ones are moved to the back (looked at again after the others), at most one
        pass over the store before giving up on the others.
        """
        logs = self._logs
        for _ in range(len(logs)):
            if self.bytes <= self.budget:
                return
            stream_id, other = next(iter(logs.items()))
            if other.ended and other is not growing:
                self._drop(stream_id)
            else:
                logs.move_to_end(stream_id)
        if self.bytes > self.budget:
            self.bytes -= growing.trim(growing.held // 2)

    def close(self) -> None:
        for stream_id in list(self._logs):
            self._drop(stream_id)
