"""One session per WebSocket: its receive loop, its in-flight requests, its send queue and its cleanup.

Each request runs the same ``ChatStream`` pipeline as SSE and ends with exactly one ``done`` or
one ``error`` frame. A ``chat.completion.resume`` request replays a stream's log after a
position and follows it, framed like a live request's chunks; cancelling it stops the stream.
Sends go through one bounded queue drained by one sender task, so a
consumer that cannot keep up is closed with 1013 instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from litestar import WebSocket

from app.access.keys import ANONYMOUS, SUBPROTOCOL, GatewayKeys
from app.access.origins import OriginPolicy
from app.api.chat.sse import RAW_SEND
from app.api.chat.ws_frames import (
    CancelFrame,
    CreateFrame,
    FrameError,
    ResumeFrame,
    decode_client_frame,
    done_frame,
    error_frame,
)
from app.api.chat.ws_writer import RequestWriter, SlowConsumer
from app.config.settings import Settings
from app.core.context import RequestContext
from app.core.drain import Drain
from app.core.service import ChatService
from app.core.stream import ChatStream
from app.domain.chat_request import ChatCompletionInput, validate_chat_body
from app.domain.errors import GatewayError, InvalidRequest, RateLimited, public_error
from app.domain.events import CANCELLED, CLIENT_DISCONNECTED
from app.limits.limiter import Admission
from app.providers.quoting import ProviderText, traceback_text
from app.resume.replay import Replay
from app.resume.service import Resumes
from app.transport.direct_socket import DirectSocket

logger = structlog.get_logger("chat.websocket")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class _InFlight:
    __slots__ = ("cancelled", "resumed", "started", "stream", "task")

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.stream: ChatStream | None = None
        self.cancelled = False
        self.started = False
        self.resumed: str | None = None  # the stream id, for a resume request


class ChatSocketSession:
    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        chat: ChatService,
        settings: Settings,
        keys: GatewayKeys,
        *,
        origins: OriginPolicy | None = None,
        drain: Drain | None = None,
        resumes: Resumes | None = None,
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
        quote: ProviderText | None = None,
    ) -> None:
        self.socket = socket
        self.chat = chat
        self.settings = settings
        self.keys = keys
        self.origins = origins or OriginPolicy(settings.server.cors_origins)
        self.drain = drain
        self.resumes = resumes
        self.inflight: dict[str, _InFlight] = {}
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=settings.websocket.send_queue_frames)
        self._closing = False
        #: Writes a frame at once when the socket takes it (set once the handshake is done).
        self._direct: DirectSocket | None = None
        self._sending = False  # the sender task is writing a queued frame: later ones queue behind it
        self._close_code: int | None = None
        self._on_open = on_open
        self._on_close = on_close
        self._quote = quote  # redacts an unexpected error's detail (shown in development) and traceback
        self.request_id = socket.scope.get("state", {}).get("request_id")
        self.caller = ANONYMOUS

    def _public_error(self, exc: BaseException) -> GatewayError:
        redact = self._quote.redact if self._quote is not None else None
        return public_error(exc, production=self.settings.production, redact=redact)

    async def run(self) -> None:
        offered: list[str] = list(self.socket.scope.get("subprotocols") or [])
        origin = self.socket.headers.get("origin")
        if not self.origins.allows(origin, self.socket.headers.get("host"), self.socket.scope.get("scheme", "ws")):
            # Closing before accepting refuses the handshake with a 403: a cross-site page gets nothing.
            logger.warning("ws_origin_refused", request_id=self.request_id, origin=(origin or "")[:200])
            await self.socket.close(code=CLOSE_POLICY_VIOLATION)
            return
        await self.socket.accept(subprotocols=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        self._direct = DirectSocket.of(self.socket.scope.get("state", {}).get(RAW_SEND))
        if self._on_open is not None:
            self._on_open()
        try:
            try:
                self.caller = self.keys.from_websocket(offered, self.socket.headers)
            except GatewayError as exc:
                # Browsers cannot read a refused handshake's status, so refuse after accepting.
                await self.socket.close(code=CLOSE_POLICY_VIOLATION, reason=exc.message[:120])
                return
            sender = asyncio.create_task(self._send_loop(), name="ws-sender")
            if self.drain is not None:
                self.drain.track_session(self)
            try:
                await self._receive_loop()
            finally:
                if self.drain is not None:
                    self.drain.session_closed(self)
                self._closing = True
                for entry in list(self.inflight.values()):
                    entry.task.cancel()
                if self.inflight:
                    await asyncio.gather(*(e.task for e in self.inflight.values()), return_exceptions=True)
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                if self._close_code is not None and (self._direct is None or not self._direct.close_sent):
                    with contextlib.suppress(Exception):
                        await self.socket.close(code=self._close_code)
        finally:
            if self._on_close is not None:
                self._on_close()

    async def _receive_loop(self) -> None:
        max_bytes = self.settings.websocket.max_frame_bytes
        while not self._closing:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = cast("str | bytes | None", message.get("text"))
            if data is None:
                data = cast(bytes, message.get("bytes") or b"")
            size = len(data.encode()) if isinstance(data, str) else len(data)
            if size > max_bytes:
                self._close_code = CLOSE_TOO_BIG
                return
            try:
                self._handle_frame(data)
            except SlowConsumer:
                return
            except Exception as exc:  # a frame must never take the socket (and its other requests) down
                logger.error(
                    "ws_frame_failed",
                    request_id=self.request_id,
                    error=type(exc).__name__,
                    exception=traceback_text(exc, self._quote),
                )
                try:
                    self._send(error_frame(None, self._public_error(exc)))
                except SlowConsumer:
                    return

    def _handle_frame(self, data: str | bytes) -> None:
        try:
            frame = decode_client_frame(data)
        except FrameError as exc:
            self._send(error_frame(exc.frame_id, InvalidRequest(str(exc))))
            return
        match frame:
            case CreateFrame(id=frame_id, request=body):
                self._create(frame_id, body)
            case CancelFrame(id=frame_id):
                self._cancel(frame_id)
            case ResumeFrame(id=frame_id, stream_id=stream_id, last_event_id=last_event_id):
                self._resume(frame_id, stream_id, last_event_id)

    async def close_for_shutdown(self) -> None:
        """The drain's last phase: once this socket's requests have sent their last frames (the
        drain ended their streams in-band), close it with 1001 (going away)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.02)
        # Let the sender flush what the requests queued, within the same bound.
        while not self._queue.empty() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self._close_code = CLOSE_GOING_AWAY
        with contextlib.suppress(Exception):
            await self.socket.close(code=CLOSE_GOING_AWAY, reason="server shutting down")

    def _create(self, frame_id: str, body: dict[str, Any]) -> None:
        if not self._admit(frame_id):
            return
        try:
            request = validate_chat_body(body)
        except GatewayError as exc:
            self._send(error_frame(frame_id, exc))
            return
        self._start(frame_id, self._run_request(frame_id, request))

    def _start(self, frame_id: str, work: Any, resumed: str | None = None) -> None:
        task = asyncio.create_task(work, name=f"ws-request:{frame_id}")
        entry = _InFlight(task)
        entry.resumed = resumed
        self.inflight[frame_id] = entry
        task.add_done_callback(lambda _t: self._never_ran(frame_id, entry))

    def _admit(self, frame_id: str) -> bool:
        """The checks every request frame passes (drain, duplicate id, in-flight bound); False -> answered."""
        if self.drain is not None and self.drain.refusing:
            self._send(error_frame(frame_id, self.drain.refusal()))
            return False
        if frame_id in self.inflight:
            self._send(
                error_frame(
                    frame_id,
                    InvalidRequest(
                        f"A request with id {frame_id!r} is already in flight.", code="duplicate_id", param="id"
                    ),
                )
            )
            return False
        if len(self.inflight) >= self.settings.websocket.max_inflight:
            limit = self.settings.websocket.max_inflight
            self._send(error_frame(frame_id, RateLimited(f"At most {limit} requests may run at once on one socket.")))
            return False
        return True

    def _resume(self, frame_id: str, stream_id: str, last_event_id: str | None) -> None:
        if not self._admit(frame_id):
            return
        self._start(frame_id, self._run_resume(frame_id, stream_id, last_event_id), resumed=stream_id)

    async def _run_resume(self, frame_id: str, stream_id: str, last_event_id: str | None) -> None:
        """Replay the stream's log after the position, then follow it, as this request's frames."""
        replay: Replay | None = None
        admission: Admission | None = None
        writer = RequestWriter(self._send, frame_id, stream_id)
        try:
            if self.resumes is None:
                raise InvalidRequest("Resuming is not available on this server.")
            # A resumed reader holds one of the key's stream slots, like the stream itself (429 else).
            admission = await self.chat.admit_resume(self.caller)
            replay = await self.resumes.open(stream_id, self.caller.scope, last_event_id)
            while True:
                event = replay.take()
                if event is None:
                    await replay.wait()
                    continue
                if event.chunk is not None:
                    await writer.chunk(event.seq, event.chunk.raw, False)
                    continue
                await writer.end(event)
                return
        except GatewayError as exc:
            with contextlib.suppress(SlowConsumer):
                self._send(error_frame(frame_id, exc))
        except SlowConsumer:
            pass
        except asyncio.CancelledError:
            entry = self.inflight.get(frame_id)
            if entry is None or not entry.cancelled or self._closing:
                raise
            # The client's cancel stops the stream itself (as DELETE would), then ends this request.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if self.resumes is not None:
                with contextlib.suppress(GatewayError):
                    await self.resumes.stop(stream_id, self.caller.scope)
            with contextlib.suppress(SlowConsumer):
                self._send(done_frame(frame_id, "cancelled", None))
        finally:
            if replay is not None:
                replay.close()
            if admission is not None:
                admission.settle(stream_id, None)
            self.inflight.pop(frame_id, None)

    def _never_ran(self, frame_id: str, entry: _InFlight) -> None:
        """A task cancelled before its first step never runs its body, so its cleanup happens here."""
        if self.inflight.get(frame_id) is not entry:
            return  # the relay ran and cleaned up after itself
        del self.inflight[frame_id]
        if entry.resumed is not None:
            if entry.cancelled and not self._closing:
                with contextlib.suppress(SlowConsumer):
                    self._send(done_frame(frame_id, "cancelled", None))
        elif entry.cancelled and not self._closing:
            self._answer_cancelled(frame_id, entry.stream)
        elif entry.stream is not None:
            entry.stream.close(CANCELLED if entry.cancelled else CLIENT_DISCONNECTED)

    def _answer_cancelled(self, frame_id: str, stream: ChatStream | None) -> None:
        """End a cancelled request: its one done frame (the stream's first byte) and its outcome."""
        if stream is not None:
            stream.mark_first_byte()
        with contextlib.suppress(SlowConsumer):
            self._send(done_frame(frame_id, "cancelled", stream.usage if stream is not None else None))
        if stream is not None:
            stream.close(CANCELLED)

    def _cancel(self, frame_id: str) -> None:
        entry = self.inflight.get(frame_id)
        if entry is None:
            return  # already finished: its done frame is on its way, a cancel is a no-op
        entry.cancelled = True
        if entry.stream is not None:
            entry.stream.request_cancel()
        if entry.started or entry.resumed is not None:
            entry.task.cancel()
        # else: the task has not run yet; it sees the flag first thing and ends the request itself.

    async def _run_request(self, frame_id: str, request: ChatCompletionInput) -> None:
        entry = self.inflight.get(frame_id)
        if entry is not None:
            entry.started = True
        started = time.perf_counter()
        try:
            # Allow-list, limits and budget: a refusal is this id's error frame (403 / 429).
            admission = await self.chat.admit(request, self.caller)
            stream = await self.chat.open_stream(
                request,
                "websocket",
                started_at=started,
                caller=self.caller,
                traceparent=self.socket.headers.get("traceparent"),  # the upgrade request's, for each request
                admission=admission,
            )
        except GatewayError as exc:
            self.inflight.pop(frame_id, None)
            with contextlib.suppress(SlowConsumer):
                self._send(error_frame(frame_id, exc))
            return
        if entry is not None:
            entry.stream = stream
            if entry.cancelled:
                # Cancelled before it ran: the upstream task is cancelled before its first step, so
                # no provider call is made, and the request still ends with its one done frame.
                self.inflight.pop(frame_id, None)
                self._answer_cancelled(frame_id, stream)
                return
        await self._relay(frame_id, stream)

    async def _relay(self, frame_id: str, stream: ChatStream) -> None:
        try:
            await stream.pump(RequestWriter(self._send, frame_id, stream.id, can_push=self._direct is not None))
        except asyncio.CancelledError:
            entry = self.inflight.get(frame_id)
            if entry is None or not entry.cancelled or self._closing:
                raise
            # The client's cancel: the pump answered it (done frame "cancelled"); the task ends here.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except SlowConsumer:
            pass  # the socket is being closed with 1013; the stream ended as the client's
        except Exception as exc:
            logger.error(
                "ws_request_failed",
                request_id=self.request_id,
                id=frame_id,
                error=type(exc).__name__,
                exception=traceback_text(exc, self._quote),
            )
            with contextlib.suppress(SlowConsumer):
                self._send(error_frame(frame_id, self._public_error(exc)))
        finally:
            self.inflight.pop(frame_id, None)
            context = RequestContext(self.request_id or "")
            context.key, context.stream = self.caller.name, stream
            logger.info("ws_request", id=frame_id, **context.log_fields())

    def _send(self, frame: bytes) -> None:
        """Write ``frame`` now if the socket takes it and nothing is queued before it, else queue it."""
        if self._closing:
            return
        direct = self._direct
        if direct is not None and not self._sending and self._queue.empty() and direct.can_write():
            direct.write_text(frame)
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._close_code = CLOSE_TRY_AGAIN_LATER
            self._closing = True
            # Wake the receive loop's owner: closing the socket ends the session.
            asyncio.get_running_loop().create_task(self._close_slow())
            raise SlowConsumer from None

    async def _close_slow(self) -> None:
        if self._direct is not None:
            self._direct.close(CLOSE_TRY_AGAIN_LATER, "consumer too slow")  # not behind the full buffer
            return
        with contextlib.suppress(Exception):
            await self.socket.close(code=CLOSE_TRY_AGAIN_LATER, reason="consumer too slow")

    async def _send_loop(self) -> None:
        queue = self._queue
        send = self.socket.send
        while True:
            frame = await queue.get()
            if frame is None:
                return
            self._sending = True
            try:
                await send({"type": "websocket.send", "text": frame.decode(), "bytes": None})
            finally:
                self._sending = False
