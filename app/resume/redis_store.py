"""The Redis resume store: every replica can resume every stream.

Layout, per stream (all keys expire ``resume_ttl_s`` after the stream's last append):

- ``chat:resume:<id>``: a Redis Stream, one entry per event, entry id ``<seq>-0`` so that a
  position is an entry id (``XREAD ... <seq>-0`` returns exactly what follows ``seq``), trimmed by
  ``XADD MAXLEN`` to ``resume_max_events``. Fields: ``c`` (a chunk's bytes, as the provider sent
  them), or ``d`` (done: finish reason and usage) or ``e`` + ``st`` (error body and status).
- ``chat:resume:<id>:meta``: the owner (gateway key scope), the replica that runs the stream and,
  for streams of another API than chat completions, the framing they replay in (``format``);
  ``broken`` once the copy is known to have a hole (below).
- ``chat:resume:replica:<replica id>``: set while that replica lives (rewritten every
  ``LIVENESS_EVERY_S``, expiring after ``LIVENESS_TTL_S``).
- ``chat:resume:<id>:readers``: set (with a short expiry) while a replica follows the stream, so
  that the replica that runs it keeps the upstream going past its detach grace.
- ``chat:resume:<id>:stop``: set by a DELETE that reached another replica, which then publishes the id
  on the channel ``chat:resume:stop``; the replica running the stream stops it when the message comes,
  or, if its subscription was down when it was published (Redis's pub/sub keeps nothing for a
  subscriber that is reconnecting), when it subscribes again and looks for the keys of the streams it
  runs; it also looks every ``STOP_SWEEP_S``, for a subscription that is silently dead (a half-open
  connection never errors).

Appending never delays the live client: ``append`` puts the event in the stream's outbox (no I/O,
no encoding) and one flusher task per process writes every outbox in one pipelined round trip,
so under load one round trip carries many streams' events. What happens when Redis is slow or
away: the live stream is served from memory and never waits for Redis. The circuit breaker
(``app/redis/breaker.py``) bounds each round trip by ``OP_TIMEOUT_S`` and, during an outage,
refuses at once. A stream whose append was lost is marked broken: its copy in Redis has a hole, so
it stops being appended to and its resumes answer 503 (a resume must never silently skip
events). Streams that begin while the breaker is open are not copied at all (503 on resume).
Resumes on any replica answer 503 while the breaker is open. The other replicas learn of a broken
copy from its meta key (``broken``), written once Redis answers again (the liveness loop retries it
every ``LIVENESS_EVERY_S``): their resumes then answer 503 at once, and their followers end with a
503 error event at their next silence check, rather than replaying up to the hole and waiting for the
stall bound.

A replica that dies mid-stream (SIGKILL, a lost host) stops appending, and its liveness key expires
within ``LIVENESS_TTL_S``. A follower that has had no news for ``SILENCE_CHECK_S`` looks for that
key once a second; when it is gone, the follower ends the stream's log itself with an in-band 502
``upstream_unavailable`` (an ``XADD`` at the next seq, which fails harmlessly if the stream moved on
meanwhile), so every reader of it ends, and every later resume ends at once. A resume that opens
such a stream ends it the same way before it starts. Bound, from the kill to the readers' error:
``LIVENESS_TTL_S`` + about 1 s (7 s), inside the 10 s docs/http.md promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlparse

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.config.settings import StreamingSettings
from app.domain.chunks import Chunk, Usage
from app.domain.errors import (
    ErrorBody,
    InvalidResumePosition,
    ReplayedError,
    ResumeUnavailable,
    StreamNotFound,
    UpstreamUnavailable,
)
from app.domain.events import StreamEvent
from app.redis.breaker import BackendUnavailable, BreakerUser, CircuitBreaker
from app.redis.pool import IdleClosingPool, pool_options
from app.resume.log import StreamLog

logger = structlog.get_logger("chat.resume")

#: Bound on one Redis round trip (the cache's measured choice, see ``cache.op_timeout_s``).
OP_TIMEOUT_S = 0.5
#: How long one XREAD waits for new events before the follower looks around (readers key, stall).
BLOCK_MS = 1000
#: A followed stream whose log gains nothing for this long past the idle timeout has lost its writer
#: (the replica that ran it died or lost Redis): the follower ends with a 503 error event.
STALL_MARGIN_S = 5.0
#: A position past the end waits this long for a replica that is still appending.
PAST_END_WAIT_S = 1.0
#: Blocking reads at once on this replica (resumers following streams that run on other replicas):
#: each holds a Redis connection for up to BLOCK_MS. Past it a reader waits its turn, as if no event
#: had come (its heartbeats go on), instead of each reader opening a connection until Redis's
#: ``maxclients`` refuses them and trips the breaker that the cache and the limiter share.
MAX_BLOCKING_READS = 256
STOP_CHANNEL = "chat:resume:stop"
#: A replica rewrites its liveness key this often while it runs streams; the key lives LIVENESS_TTL_S,
#: which is the margin a busy event loop or a slow Redis reply has before followers call it dead.
LIVENESS_EVERY_S = 2.0
LIVENESS_TTL_S = 6.0
#: A follower that got no event for this long checks, once a second, that the stream's replica lives.
SILENCE_CHECK_S = 2.0
ORPHANED = "The replica running this stream stopped; the stream cannot go on. Retry the request."
BROKEN = "This stream's log could not be kept in the resume store."
#: Broken copies waiting to be marked in Redis (an outage can break every stream begun meanwhile):
#: past this many the oldest are given up on, and their resumes elsewhere fall back on the stall bound.
MAX_UNMARKED = 100_000
#: Marks written in one round trip, and stop keys looked up in one.
MARK_BATCH = 1000
#: How often a replica looks up the stop keys of the streams it runs whatever its subscription says.
STOP_SWEEP_S = 10.0

_encode = msgspec.json.encode
_body_decoder = msgspec.json.Decoder(ErrorBody)


class _Done(msgspec.Struct, array_like=True):
    finish_reason: str | None
    usage: tuple[int, int] | None


_done_decoder = msgspec.json.Decoder(_Done)


def _key(stream_id: str) -> str:
    return f"chat:resume:{stream_id}"


def _replica_key(replica_id: str) -> str:
    return f"chat:resume:replica:{replica_id}"


def encode_event(event: StreamEvent) -> dict[str, bytes]:
    if event.chunk is not None:
        return {"c": event.chunk.raw}
    if event.error is not None:
        return {"e": _encode(event.error.body()), "st": str(event.error.status).encode()}
    usage = (event.usage.prompt_tokens, event.usage.completion_tokens) if event.usage is not None else None
    return {"d": _encode(_Done(event.finish_reason, usage))}


def decode_event(entry_id: bytes, fields: dict[bytes, bytes]) -> StreamEvent:
    seq = int(entry_id.split(b"-", 1)[0])
    if b"c" in fields:
        return StreamEvent(seq, Chunk(raw=fields[b"c"]))
    if b"e" in fields:
        body = _body_decoder.decode(fields[b"e"])
        return StreamEvent(seq, error=ReplayedError(int(fields.get(b"st", b"500")), body.error))
    done = _done_decoder.decode(fields[b"d"])
    usage = Usage(*done.usage) if done.usage is not None else None
    return StreamEvent(seq, finish_reason=done.finish_reason, usage=usage)


class _Head(NamedTuple):
    """What a resume needs to know of a stream's copy before reading it."""

    owner: str | None
    format: str
    first_seq: int
    last_seq: int
    ended: bool
    broken: bool


class _Outbox:
    """One stream's events not yet written to Redis: the ``SharedLog`` of its local log."""

    __slots__ = ("__weakref__", "broken", "ended", "events", "format", "owner", "started", "store", "stream_id")

    def __init__(self, store: RedisResumeStore, stream_id: str, owner: str, format: str = "chat") -> None:
        self.store = store
        self.stream_id = stream_id
        self.owner = owner
        self.format = format
        self.events: list[StreamEvent] = []
        self.started = False  # the meta key is written with the first batch
        self.ended = False
        self.broken = False

    def append(self, event: StreamEvent) -> None:
        if event.chunk is None:
            self.store.ended(self)
        if self.broken:
            return
        self.events.append(event)
        self.store.dirty(self)

    def mark_broken(self) -> None:
        """Its copy has a hole: no more appends, and the other replicas are told (``broken``)."""
        if not self.broken:
            self.broken = True
            self.store.broke(self)

    async def readers_elsewhere(self) -> bool:
        return await self.store.readers_elsewhere(self.stream_id)


class RedisResumeStore:
    def __init__(
        self,
        url: str,
        settings: StreamingSettings,
        on_stop: Callable[[str], None],
        breaker: BreakerUser | None = None,
        max_blocking_reads: int = MAX_BLOCKING_READS,
        stop_sweep_s: float = STOP_SWEEP_S,
    ) -> None:
        self._ttl_ms = int(settings.resume_ttl_s * 1000)
        self._max_events = settings.resume_max_events
        self._stall_s = settings.idle_timeout_s + settings.detach_grace_s + STALL_MARGIN_S
        self._readers_ms = max(3000, int(settings.detach_grace_s * 2000))
        options = pool_options(OP_TIMEOUT_S)
        self._redis = aioredis.Redis(connection_pool=IdleClosingPool.from_url(url, **options))
        # Blocking reads (XREAD BLOCK, the stop channel) need a longer socket timeout than the op bound.
        blocking = {
            **pool_options(BLOCK_MS / 1000 + OP_TIMEOUT_S),
            "socket_timeout": BLOCK_MS / 1000 + 2 * OP_TIMEOUT_S,
            "max_connections": max_blocking_reads,
        }
        self._blocking = aioredis.Redis(connection_pool=IdleClosingPool.from_url(url, **blocking))
        # The stop channel's connection has no retry, so that a failure reaches the listener: with
        # one, redis-py would reconnect and subscribe again without a word, and the stops published
        # meanwhile would go unread. (It still reconnects once before raising; the listener then
        # starts over on a fresh subscription and reads the stop keys, ``_stops_missed``.)
        listener = {**blocking, "retry": Retry(NoBackoff(), 0), "max_connections": 1}
        self._subscriber = aioredis.Redis(connection_pool=IdleClosingPool.from_url(url, **listener))
        self._reads = asyncio.Semaphore(max_blocking_reads)
        parsed = urlparse(url)
        target = f"{parsed.hostname}:{parsed.port or 6379}{parsed.path or ''}"
        # The server's shared breaker (app/redis/breakers.py); a breaker of its own when used alone.
        self._own: CircuitBreaker | None = None
        if breaker is None:
            self._own = CircuitBreaker("resume_store", self._redis.ping, op_timeout_s=OP_TIMEOUT_S, target=target)
            breaker = self._own.user("resume_store", OP_TIMEOUT_S)
        self.breaker = breaker
        self.replica_id = os.urandom(8).hex()
        self._announced_at = 0.0  # when this replica's liveness key was last written
        self._stop_sweep_s = stop_sweep_s
        self._closing = False
        self._swept_at = time.monotonic()
        self._on_stop = on_stop
        self._dirty: dict[str, _Outbox] = {}
        #: The streams this replica runs (until their last event), for the stop keys (``_stops_missed``);
        #: weak, so that a log dropped without an end does not stay here.
        self._running: weakref.WeakValueDictionary[str, _Outbox] = weakref.WeakValueDictionary()
        #: Broken copies not yet marked in Redis, oldest first.
        self._unmarked: dict[str, _Outbox] = {}
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None

    # -- writing (the replica that runs the stream) ------------------------------------------------

    def begin(self, log: StreamLog) -> None:
        outbox = _Outbox(self, log.stream_id, log.owner, log.format)
        log.shared = outbox
        self._running[outbox.stream_id] = outbox
        if not self.breaker.available:
            outbox.mark_broken()  # its copy would start with a hole
        if self._flusher is None:
            self._wake = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._flusher = loop.create_task(self._flush_forever(), name="resume-flusher")
            self._listener = loop.create_task(self._listen_for_stops(), name="resume-stops")
            self._announcer = loop.create_task(self._announce_forever(), name="resume-liveness")
        if not outbox.broken:
            # The owner goes out now, before the first event: a resume on another replica that
            # arrives as soon as the client knows the stream id then finds it.
            self.dirty(outbox)

    def ended(self, outbox: _Outbox) -> None:
        self._running.pop(outbox.stream_id, None)

    def broke(self, outbox: _Outbox) -> None:
        self._unmarked[outbox.stream_id] = outbox
        while len(self._unmarked) > MAX_UNMARKED:
            del self._unmarked[next(iter(self._unmarked))]

    def dirty(self, outbox: _Outbox) -> None:
        self._dirty[outbox.stream_id] = outbox
        assert self._wake is not None
        self._wake.set()

    async def _flush_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, {}
            with contextlib.suppress(Exception):  # a flush failure is already accounted for per outbox
                await self._flush(list(batch.values()))

    async def _announce_forever(self) -> None:
        """Keep this replica's liveness key: followers end the streams of a replica whose key lapsed.
        Also marks the copies that broke since the last turn (``_mark_broken``)."""
        while True:
            if time.monotonic() - self._announced_at >= LIVENESS_EVERY_S / 2:
                with contextlib.suppress(Exception):  # Redis away: the breaker logs it; streams break anyway
                    await self.breaker.run(self._redis.set, _replica_key(self.replica_id), b"1", px=self._liveness_ms)
                    self._announced_at = time.monotonic()
            with contextlib.suppress(Exception):  # still away: the next turn tries again
                for _ in range(MAX_UNMARKED // MARK_BATCH):
                    if not self._unmarked or not self.breaker.available:
                        break
                    await self._mark_broken()
            if self._running and time.monotonic() - self._swept_at >= self._stop_sweep_s:
                self._swept_at = time.monotonic()
                with contextlib.suppress(Exception):
                    await self._stops_missed()
            await asyncio.sleep(LIVENESS_EVERY_S)

    async def _mark_broken(self) -> None:
        """Write ``broken`` into the meta of copies that broke (with their owner, so that a copy that
        never started answers 503, not 404, to its owner elsewhere)."""
        batch = list(itertools.islice(self._unmarked.values(), MARK_BATCH))
        pipe = self._redis.pipeline(transaction=False)
        for outbox in batch:
            meta_key = f"{_key(outbox.stream_id)}:meta"
            meta: dict[Any, Any] = {"owner": outbox.owner, "replica": self.replica_id, "broken": b"1"}
            if outbox.format != "chat":
                meta["format"] = outbox.format
            pipe.hset(meta_key, mapping=meta)
            pipe.pexpire(meta_key, self._ttl_ms)
        await self.breaker.run(pipe.execute)
        for outbox in batch:
            if self._unmarked.get(outbox.stream_id) is outbox:
                del self._unmarked[outbox.stream_id]

    @property
    def _liveness_ms(self) -> int:
        return int(LIVENESS_TTL_S * 1000)

    async def _flush(self, outboxes: list[_Outbox]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        written: list[tuple[_Outbox, int, int]] = []  # each outbox's commands: [first, end) in the pipeline
        commands = 0
        if time.monotonic() - self._announced_at >= LIVENESS_EVERY_S / 2:
            # With the batch, so that no follower can see a stream's meta before its replica's key.
            pipe.set(_replica_key(self.replica_id), b"1", px=self._liveness_ms)
            commands += 1
        for outbox in outboxes:
            if outbox.broken or (outbox.started and not outbox.events):
                continue
            events, outbox.events = outbox.events, []
            key = _key(outbox.stream_id)
            first = commands
            if not outbox.started:
                meta: dict[Any, Any] = {"owner": outbox.owner, "replica": self.replica_id}
                if outbox.format != "chat":
                    meta["format"] = outbox.format
                pipe.hset(f"{key}:meta", mapping=meta)
                commands += 1
                outbox.started = True
            for event in events:
                pipe.xadd(key, encode_event(event), id=f"{event.seq}-0", maxlen=self._max_events, approximate=False)  # type: ignore[arg-type]
                if event.chunk is None:
                    outbox.ended = True
            # Expiry runs from the last append: after the end that is "resume_ttl_s after the end",
            # and the log of a replica that died mid-stream goes away on its own.
            pipe.pexpire(key, self._ttl_ms)
            pipe.pexpire(f"{key}:meta", self._ttl_ms)
            commands += len(events) + 2
            written.append((outbox, first, commands))
        if not commands:
            return
        announced = time.monotonic()
        try:
            # Errors per command: one stream's refused append (a follower ended it, taking this replica
            # for dead) must not break the other streams of the batch.
            results = await self.breaker.run(pipe.execute, raise_on_error=False)
        except Exception as exc:
            for outbox, _, _ in written:
                outbox.mark_broken()  # its copy has a hole now: resumes of it answer 503
            if not isinstance(exc, BackendUnavailable):
                logger.warning("resume_append_failed", streams=len(written), error=f"{type(exc).__name__}: {exc}"[:200])
            raise
        if commands > sum(end - first for _, first, end in written):
            self._announced_at = announced
        failed = [o for o, first, end in written if any(isinstance(r, Exception) for r in results[first:end])]
        for outbox in failed:
            outbox.mark_broken()
        if failed:
            error = next(r for r in results if isinstance(r, Exception))
            logger.warning("resume_append_failed", streams=len(failed), error=f"{type(error).__name__}: {error}"[:200])

    async def readers_elsewhere(self, stream_id: str) -> bool:
        return bool(await self.breaker.run(self._redis.exists, f"{_key(stream_id)}:readers"))

    async def _listen_for_stops(self) -> None:
        """Stop requests for streams of this replica (a DELETE that reached another one).

        Its loops also end on ``_closing``: a cancellation that a library swallows (Python 3.11's
        ``wait_for`` can) must not keep the task, and the process's shutdown, going."""
        while not self._closing:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(STOP_CHANNEL)
                # Confirmed before the stop keys are read: a DELETE after that read is published to us.
                async with asyncio.timeout(BLOCK_MS / 1000 + 2 * OP_TIMEOUT_S):
                    while (await pubsub.get_message(timeout=BLOCK_MS / 1000) or {}).get("type") != "subscribe":
                        pass
                await self._stops_missed()
                while not self._closing:
                    message = await pubsub.get_message(timeout=BLOCK_MS / 1000)
                    if message is not None and message.get("type") == "message":
                        self._stop(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)  # Redis away: the breaker logs the outage; retry quietly
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _stops_missed(self) -> None:
        """The streams running here that a DELETE elsewhere asked to stop while this replica was not
        subscribed (their stop keys); called once the subscription is up, so nothing falls between."""
        running = list(self._running)
        for start in range(0, len(running), MARK_BATCH):
            ids = running[start : start + MARK_BATCH]
            found: list[Any] = await self.breaker.run(self._redis.mget, [f"{_key(i)}:stop" for i in ids])
            for stream_id, value in zip(ids, found, strict=True):
                if value is not None:
                    self._stop(stream_id)

    def _stop(self, stream_id: str) -> None:
        try:
            self._on_stop(stream_id)
        except Exception as exc:  # one stream's failure must not stop the others' (or the listener)
            logger.warning("resume_stop_failed", stream_id=stream_id, error=f"{type(exc).__name__}: {exc}"[:200])

    # -- reading (any replica) ---------------------------------------------------------------------

    def check_available(self, log: StreamLog | None) -> None:
        if not self.breaker.available:
            raise ResumeUnavailable("The resume store is unreachable; retry shortly.")
        if log is not None and log.shared is not None and log.shared.broken:
            raise ResumeUnavailable(BROKEN)

    async def _head(self, stream_id: str) -> _Head:
        key = _key(stream_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(f"{key}:meta", ["owner", "format", "broken"])
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        try:
            (owner, format, broken), first, last = await self.breaker.run(pipe.execute)
        except Exception as exc:
            raise ResumeUnavailable("The resume store is unreachable; retry shortly.") from exc
        first_seq = int(first[0][0].split(b"-", 1)[0]) if first else 1
        last_seq, ended = 0, False
        if last:
            event = decode_event(*last[0])
            last_seq, ended = event.seq, event.chunk is None
        return _Head(
            owner.decode() if owner is not None else None,
            format.decode() if format is not None else "chat",
            first_seq,
            last_seq,
            ended,
            broken is not None,
        )

    async def open(self, stream_id: str, owner: str, after_seq: int) -> RedisReplay:
        head = await self._head(stream_id)
        if head.owner is None or head.owner != owner:
            raise StreamNotFound(f"No stream {stream_id!r} to resume (unknown, expired, or not yours).")
        if head.broken:
            raise ResumeUnavailable(BROKEN)
        if not head.ended and await self.end_if_orphaned(stream_id, head.last_seq):
            head = await self._head(stream_id)
        deadline = time.monotonic() + PAST_END_WAIT_S
        while after_seq > head.last_seq and not head.ended and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # another replica may still be appending it
            head = await self._head(stream_id)
        if after_seq > head.last_seq:
            raise InvalidResumePosition(f"Event {after_seq} is past the end of the stream's log.")
        if after_seq < head.first_seq - 1:
            raise InvalidResumePosition(
                f"The stream's log starts at event {head.first_seq}: events before it were trimmed."
            )
        at_end = head.ended and after_seq >= head.last_seq
        return RedisReplay(self, stream_id, after_seq, at_end=at_end, format=head.format)

    async def read_after(self, stream_id: str, seq: int) -> list[StreamEvent]:
        """Events after ``seq`` (waiting up to BLOCK_MS for some); marks this replica as a reader."""
        key = _key(stream_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(f"{key}:readers", b"1", px=self._readers_ms)
        await self.breaker.run(pipe.execute)
        try:
            async with asyncio.timeout(BLOCK_MS / 1000):
                await self._reads.acquire()
        except TimeoutError:
            return []  # every read slot was busy for a whole read's time: nothing new, as far as it knows
        try:
            async with asyncio.timeout(BLOCK_MS / 1000 + 2 * OP_TIMEOUT_S):
                reply: Any = await self._blocking.xread({key: f"{seq}-0"}, count=512, block=BLOCK_MS)
        finally:
            self._reads.release()
        if not reply:
            return []
        return [decode_event(entry_id, fields) for entry_id, fields in reply[0][1]]

    async def end_if_orphaned(self, stream_id: str, last_seq: int) -> bool:
        """End the stream's log with an in-band 502 if the replica running it is gone; True if ended.

        ``last_seq`` is the last event the caller knows of: the end goes in right after it, and Redis
        refuses it (an entry id not past the last) if the stream moved on meanwhile. A copy marked
        broken raises ``ResumeUnavailable``: nothing more will come, and what came has a hole.
        """
        key = _key(stream_id)
        try:
            fields: Any = await self.breaker.run(self._redis.hmget, f"{key}:meta", ["replica", "broken"])
            replica, broken = fields
            if broken is not None:
                raise ResumeUnavailable(BROKEN)
            if replica is None:
                return False  # written by a replica that does not announce itself: the stall bound applies
            alive: int = await self.breaker.run(self._redis.exists, _replica_key(replica.decode()))
            if alive:
                return False
            event = StreamEvent(last_seq + 1, error=UpstreamUnavailable(ORPHANED))
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(key, encode_event(event), id=f"{event.seq}-0", maxlen=self._max_events, approximate=False)  # type: ignore[arg-type]
            pipe.pexpire(key, self._ttl_ms)
            pipe.pexpire(f"{key}:meta", self._ttl_ms)
            results = await self.breaker.run(pipe.execute, raise_on_error=False)
        except BackendUnavailable as exc:
            raise ResumeUnavailable("The resume store is unreachable; retry shortly.") from exc
        if isinstance(results[0], Exception):
            return False  # an event came after all (or another follower ended it first): read on
        logger.warning("resume_stream_orphaned", stream_id=stream_id, replica=replica.decode(), last_seq=last_seq)
        return True

    async def stop(self, stream_id: str, owner: str) -> bool:
        """DELETE on a replica that does not run the stream: tell the one that does."""
        key = _key(stream_id)
        try:
            found: Any = await self.breaker.run(self._redis.hget, f"{key}:meta", "owner")
            if found is None or found.decode() != owner:
                return False
            # The key first: a replica whose subscription is down when the message goes out finds it
            # when it subscribes again (``_stops_missed``).
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(f"{key}:stop", b"1", px=self._ttl_ms)
            pipe.publish(STOP_CHANNEL, stream_id)
            await self.breaker.run(pipe.execute)
        except BackendUnavailable as exc:
            raise ResumeUnavailable("The resume store is unreachable; retry shortly.") from exc
        return True

    async def health(self) -> bool:
        return await self.breaker.check()

    async def close(self) -> None:
        self._closing = True
        tasks = [task for task in (self._flusher, self._listener, self._announcer) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=BLOCK_MS / 1000 + 2 * OP_TIMEOUT_S)  # a read in flight ends by then
        if self._unmarked and self.breaker.available:
            # One bounded try: a broken copy left unmarked reads as a replica gone (a 502) elsewhere.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2 * OP_TIMEOUT_S):
                    await self._mark_broken()
        if self._own is not None:
            await self._own.aclose()
        for client in (self._redis, self._blocking, self._subscriber):
            await client.aclose()
            await client.connection_pool.disconnect()  # a pool passed in is not the client's to close


class RedisReplay:
    """A replay read from Redis (the stream runs, or ran, on another replica)."""

    def __init__(
        self, store: RedisResumeStore, stream_id: str, after_seq: int, *, at_end: bool, format: str = "chat"
    ) -> None:
        self.stream_id = stream_id
        self.format = format
        self._store = store
        self._seq = after_seq
        self._at_end = at_end
        self._buffer: deque[StreamEvent] = deque()
        self._last_news = time.monotonic()
        self._checked_at = 0.0

    @property
    def at_end(self) -> bool:
        return self._at_end

    def take(self) -> StreamEvent | None:
        return self._buffer.popleft() if self._buffer else None

    async def wait(self) -> None:
        try:
            events = await self._store.read_after(self.stream_id, self._seq)
        except Exception:
            self._fail("The resume store became unreachable while following the stream.")
            return
        now = time.monotonic()
        if not events:
            silent = now - self._last_news
            if silent >= SILENCE_CHECK_S and now - self._checked_at >= 1.0:
                self._checked_at = now
                try:
                    if await self._store.end_if_orphaned(self.stream_id, self._seq):
                        return  # the next read returns the end just written, as every reader gets it
                except ResumeUnavailable as exc:  # the copy broke: what follows would have a hole
                    self._fail(exc.message)
                    return
                except Exception:
                    self._fail("The resume store became unreachable while following the stream.")
                    return
            if silent > self._store._stall_s:
                self._fail("The stream's log stopped growing: the replica running it is gone.")
            return
        self._last_news = now
        for event in events:
            if event.seq != self._seq + 1:
                self._fail("The stream's log has a gap (the resume store lost events).")
                return
            self._seq = event.seq
            self._buffer.append(event)

    def _fail(self, message: str) -> None:
        self._seq += 1
        self._buffer.append(StreamEvent(self._seq, error=ResumeUnavailable(message)))

    def close(self) -> None:
        return None
