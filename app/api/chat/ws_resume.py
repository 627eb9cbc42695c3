"""A ``chat.completion.resume`` request on a socket: the stream's log after a position, then the
live events, framed like a live request's chunks and ended by the stream's own last event.

The log is followed by the one ``Follower`` (``app/core/follow.py``), without heartbeats (a
WebSocket has none). A resumed reader holds one of the key's stream slots, like the stream itself.
Cancelling the request stops the stream itself (as ``DELETE`` would), then answers ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from app.access.keys import Caller
from app.api.chat.ws_writer import RequestWriter, SlowConsumer
from app.api.framing import CHAT
from app.core.follow import Follower
from app.core.service import ChatService
from app.domain.errors import GatewayError, InvalidRequest
from app.limits.limiter import Admission
from app.resume.service import Resumes, parse_position


async def resume_on_socket(
    writer: RequestWriter,
    chat: ChatService,
    resumes: Resumes | None,
    caller: Caller,
    stream_id: str,
    last_event_id: str | None,
    cancelled_by_client: Callable[[], bool],
) -> None:
    """Run one resume request to its one last frame. ``cancelled_by_client``: whether a cancellation
    of this task is the client's cancel (else the socket is closing, and it propagates)."""
    follower: Follower | None = None
    admission: Admission | None = None
    try:
        if resumes is None:
            raise InvalidRequest("Resuming is not available on this server.")
        admission = await chat.admit_resume(caller)  # 429 when the key's stream slots are taken
        replay = await resumes.open(stream_id, caller.scope, last_event_id)
        if replay.format != CHAT:
            replay.close()
            # Its events are another API's (a Messages stream): they replay over SSE, in their own shape.
            raise InvalidRequest(
                "This stream was not made by chat completions: resume it with "
                f"GET /v1/chat/completions/streams/{stream_id}.",
                param="stream_id",
            )
        if replay.at_end and (seq := parse_position(last_event_id, stream_id)) > 0:
            # Nothing follows that position (an SSE resume answers 204), but a request on a socket
            # ends with one last frame: the stream's own last event, again.
            replay.close()
            replay = await resumes.open(stream_id, caller.scope, f"{stream_id}:{seq - 1}")
        follower = Follower(replay)
        while True:
            events = follower.batch()
            if not events:
                await follower.wait()
                continue
            for event in events:
                if event.chunk is None:
                    await writer.end(event)
                    return
                await writer.chunk(event.seq, event.chunk.raw, False)
    except GatewayError as exc:
        writer.error(exc)
    except SlowConsumer:
        pass
    except asyncio.CancelledError:
        if not cancelled_by_client():
            raise
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        if resumes is not None:
            with contextlib.suppress(GatewayError):
                await resumes.stop(stream_id, caller.scope)
        writer.answer_cancelled(None)
    finally:
        if follower is not None:
            follower.close()
        if admission is not None:
            admission.settle(stream_id, None)
