"""The one log follower (``app/core/follow.py``), in-process over real logs and a replay whose wait
is a slow blocking read, as a Redis replay's is."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from app.api.chat.sse_replay import ReplaySseResponse
from app.api.responses.events import ResponseEvents
from app.api.responses.service import skeleton_of
from app.api.responses.sse import ResponseReplay, ResponsesReplayResponse
from app.api.responses.wire import ResponsesCreate
from app.core.follow import Follower, Heartbeat
from app.domain.chunks import Chunk
from app.domain.errors import InvalidResumePosition
from app.domain.events import StreamEvent
from app.resume.log import StreamLog
from app.resume.replay import LocalReplay
from app.transport.disconnect import DisconnectWatch


def chunk(seq: int) -> StreamEvent:
    return StreamEvent(seq, Chunk(raw=b'{"n":%d}' % seq))


async def test_a_batch_is_what_the_log_holds_now_up_to_the_last_event() -> None:
    log = StreamLog("s1", "owner", max_events=100)
    for seq in (1, 2, 3):
        log.append(chunk(seq))
    follower = Follower(LocalReplay(log, 1))
    assert [e.seq for e in follower.batch()] == [2, 3]
    assert follower.batch() == []
    assert not follower.ended
    log.append(chunk(4))
    log.append(StreamEvent(5))
    assert [e.seq for e in follower.batch()] == [4, 5]
    assert follower.ended
    follower.close()


async def test_without_a_heartbeat_the_wait_ends_with_the_next_append() -> None:
    log = StreamLog("s2", "owner", max_events=100)
    follower = Follower(LocalReplay(log, 0))
    waiting = asyncio.ensure_future(follower.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    log.append(chunk(1))
    async with asyncio.timeout(2):
        assert await waiting is False  # no heartbeat: something may be there
    assert [e.seq for e in follower.batch()] == [1]
    follower.close()


async def test_what_was_appended_while_the_reader_wrote_is_not_waited_for() -> None:
    """A reader writes its batch (its client is slow) while the stream ends: its next wait returns at
    once, rather than at the next append, which never comes (or at a heartbeat, seconds later)."""
    log = StreamLog("s7", "owner", max_events=100)
    log.append(chunk(1))
    follower = Follower(LocalReplay(log, 0), heartbeat_s=30)
    assert [e.seq for e in follower.batch()] == [1]
    log.append(chunk(2))  # meanwhile: the client was being written to
    log.append(StreamEvent(3))
    async with asyncio.timeout(1):
        assert await follower.wait() is False
    assert [e.seq for e in follower.batch()] == [2, 3] and follower.ended
    follower.close()


async def test_a_reader_behind_a_trimmed_log_is_told_so() -> None:
    log = StreamLog("s3", "owner", max_events=2)
    follower = Follower(LocalReplay(log, 0))
    for seq in (1, 2, 3):
        log.append(chunk(seq))
    with pytest.raises(InvalidResumePosition):
        follower.batch()
    follower.close()


class _BlockingReplay:
    """A replay whose wait is one long read (a Redis replay's blocking read), counting cancellations."""

    stream_id = "s4"
    format = "chat"
    at_end = False

    def __init__(self, read_s: float) -> None:
        self.read_s = read_s
        self.reads = 0
        self.cancelled_reads = 0
        self.closed = False
        self._events: deque[StreamEvent] = deque()

    def take(self) -> StreamEvent | None:
        return self._events.popleft() if self._events else None

    async def wait(self) -> None:
        self.reads += 1
        try:
            await asyncio.sleep(self.read_s)
        except asyncio.CancelledError:
            self.cancelled_reads += 1
            raise
        self._events.append(StreamEvent(1))

    def close(self) -> None:
        self.closed = True


async def test_heartbeats_come_while_a_blocking_read_runs_and_never_cancel_it() -> None:
    replay = _BlockingReplay(read_s=0.3)
    follower = Follower(replay, heartbeat_s=0.05)
    beats = 0
    async with asyncio.timeout(5):
        while not (events := follower.batch()):
            if await follower.wait():
                beats += 1
                follower.wrote()
    assert [e.seq for e in events] == [1] and follower.ended
    assert replay.reads == 1 and replay.cancelled_reads == 0
    assert beats >= 3  # one per 50 ms of the 300 ms read (fewer only on a badly stalled loop)
    follower.close()
    assert replay.closed


async def test_closing_a_follower_cancels_the_read_it_left_running() -> None:
    replay = _BlockingReplay(read_s=10)
    follower = Follower(replay, heartbeat_s=0.02)
    async with asyncio.timeout(2):
        assert await follower.wait() is False  # the heartbeat's bound passed, the read goes on
        assert await follower.wait() is True
    follower.close()
    await asyncio.sleep(0)
    assert replay.reads == 1 and replay.cancelled_reads == 1 and replay.closed


def test_the_heartbeat_rule_keys_on_the_later_of_a_write_and_another_sign_of_life() -> None:
    rule = Heartbeat(period=15.0, now=100.0)
    assert rule.due_in(110.0) == 5.0
    assert rule.due_in(110.0, active_at=108.0) == 13.0  # the stream produced an event at 108
    assert rule.due_in(116.0) <= 0
    rule.wrote(116.0)
    assert rule.due_in(116.0) == 15.0


async def _replayed_to_a_stalled_client(
    response_for: Callable[[DisconnectWatch], Any], log: StreamLog, event: Callable[[int], StreamEvent]
) -> list[bytes]:
    """The bodies a replay's response writes to a client that stops reading after its first write
    while the log moves on past it (events 3 to 9 appended to a log of at most 3), then reads on."""
    bodies: list[bytes] = []
    written, go_on = asyncio.Event(), asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            written.set()
            await go_on.wait()  # the client reads nothing meanwhile

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    response = response_for(DisconnectWatch(receive))
    replaying = asyncio.ensure_future(response.to_asgi_response()({"type": "http"}, receive, send))
    async with asyncio.timeout(2):
        await written.wait()
        for seq in range(3, 10):
            log.append(event(seq))
        go_on.set()
        await replaying
    return bodies


async def test_an_sse_reader_behind_a_trimmed_log_gets_an_error_event() -> None:
    """The replay's SSE response: a reader whose client is slow falls behind a log trimmed under it,
    and its stream ends with the contract's error event (409), not a connection cut without one."""
    log = StreamLog("s5", "owner", max_events=3)
    for seq in (1, 2):
        log.append(chunk(seq))
    bodies = await _replayed_to_a_stalled_client(
        lambda watch: ReplaySseResponse(LocalReplay(log, 0), watch, {}, heartbeat_s=30), log, chunk
    )
    assert bodies[0] == b'id: s5:1\ndata: {"n":1}\n\nid: s5:2\ndata: {"n":2}\n\n'
    assert bodies[-1].startswith(b"id: s5:2\nevent: error\ndata: ")
    assert json.loads(bodies[-1].split(b"data: ", 1)[1])["error"]["code"] == "invalid_resume_position"


async def test_a_responses_reader_behind_a_trimmed_log_gets_a_failed_response() -> None:
    """The same for a Responses replay: its stream ends with ``response.failed`` naming the position."""
    log = StreamLog("s6", "owner", max_events=3)
    text = b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%d"}}]}'
    for seq in (1, 2):
        log.append(StreamEvent(seq, Chunk(raw=text % seq)))
    skeleton = skeleton_of(ResponsesCreate(model="m"), "resp_" + "ab" * 16, [])
    reader = ResponseReplay(LocalReplay(log, 0), ResponseEvents(skeleton), -1)
    first = reader.ready()  # what the route reads before it answers
    bodies = await _replayed_to_a_stalled_client(
        lambda watch: ResponsesReplayResponse(reader, first, watch, {}, heartbeat_s=30),
        log,
        lambda seq: StreamEvent(seq, Chunk(raw=text % seq)),
    )
    last = [block for block in b"".join(bodies).split(b"\n\n") if block][-1]
    event = json.loads(last.split(b"data: ", 1)[1])
    assert event["type"] == "response.failed"
    # OpenAI's response error codes are a fixed set: the gateway's own code is in the message.
    assert "(invalid_resume_position)" in event["response"]["error"]["message"]
