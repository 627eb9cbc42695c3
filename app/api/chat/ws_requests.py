"""A chat socket's requests in flight: each runs in its own task and ends with exactly one ``done``
or one ``error`` frame.

A create runs the same core pipeline as SSE (``ChatService.open_admitted``, then the stream's
``pump`` into a ``RequestWriter``); a resume follows a stream's log (``ws_resume.py``); a cancel
cancels the request's task, and the stream answers it (``ChatStream.end_cancelled``). Every frame
goes to the socket's one bounded send queue (``Outbox``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from app.access.keys import Caller
from app.api.chat.ws_frames import error_frame
from app.api.chat.ws_resume import resume_on_socket
from app.api.chat.ws_writer import RequestWriter
from app.api.outbox import Outbox, SlowConsumer
from app.config.settings import Settings
from app.core.context import RequestContext
from app.core.drain import Drain
from app.core.service import ChatService
from app.core.stream import ChatStream
from app.domain.chat_request import ChatCompletionInput, validate_chat_body
from app.domain.errors import GatewayError, InvalidRequest, RateLimited, public_error
from app.domain.events import CANCELLED, CLIENT_DISCONNECTED
from app.observability.log import InfoLine
from app.providers.quoting import ProviderText, traceback_text
from app.resume.service import Resumes

logger = structlog.get_logger("chat.websocket")


class _InFlight:
    __slots__ = ("cancelled", "resumed", "started", "stream", "task")

    def __init__(self, task: asyncio.Task[None]) -> None:
        #: None once the task is done (``_ended``).
        self.task: asyncio.Task[None] | None = task
        self.stream: ChatStream | None = None
        self.cancelled = False
        self.started = False
        self.resumed: str | None = None  # the stream id, for a resume request


class SocketRequests:
    def __init__(
        self,
        outbox: Outbox,
        chat: ChatService,
        settings: Settings,
        caller: Caller,
        *,
        request_id: str | None,
        traceparent: str | None,
        drain: Drain | None = None,
        resumes: Resumes | None = None,
        quote: ProviderText | None = None,
        info_line: InfoLine,
    ) -> None:
        self.inflight: dict[str, _InFlight] = {}
        self._outbox = outbox
        self._chat = chat
        self._settings = settings
        self._caller = caller
        self._request_id = request_id
        self._traceparent = traceparent  # the upgrade request's, for each request on the socket
        self._drain = drain
        self._resumes = resumes
        self._quote = quote  # redacts an unexpected error's detail (shown in development) and traceback
        #: Each request's summary line: the HTTP access line's writer (the same line as structlog's
        #: logger writes, without its per-call wrapping).
        self._info_line = info_line

    def public_error(self, exc: BaseException) -> GatewayError:
        redact = self._quote.redact if self._quote is not None else None
        return public_error(exc, production=self._settings.production, redact=redact)

    def create(self, frame_id: str, body: dict[str, Any]) -> None:
        if not self._admit(frame_id):
            return
        try:
            request = validate_chat_body(body)
        except GatewayError as exc:
            self._outbox.send(error_frame(frame_id, exc))
            return
        self._start(frame_id, self._run_request(frame_id, request))

    def resume(self, frame_id: str, stream_id: str, last_event_id: str | None) -> None:
        if not self._admit(frame_id):
            return
        self._start(frame_id, self._run_resume(frame_id, stream_id, last_event_id), resumed=stream_id)

    def cancel(self, frame_id: str) -> None:
        entry = self.inflight.get(frame_id)
        if entry is None:
            return  # already finished: its done frame is on its way, a cancel is a no-op
        entry.cancelled = True
        if entry.stream is not None:
            entry.stream.request_cancel()
        if entry.task is not None and (entry.started or entry.resumed is not None):
            entry.task.cancel()
        # else: the task has not run yet; it sees the flag first thing and ends the request itself.

    async def cancel_all(self) -> None:
        """The socket is closing: every request's task is cancelled (no frame goes out any more)."""
        tasks = [entry.task for entry in self.inflight.values() if entry.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _admit(self, frame_id: str) -> bool:
        """The checks every request frame passes (drain, duplicate id, in-flight bound); False -> answered."""
        send = self._outbox.send
        if self._drain is not None and self._drain.refusing:
            send(error_frame(frame_id, self._drain.refusal()))
            return False
        if frame_id in self.inflight:
            message = f"A request with id {frame_id!r} is already in flight."
            send(error_frame(frame_id, InvalidRequest(message, code="duplicate_id", param="id")))
            return False
        limit = self._settings.websocket.max_inflight
        if len(self.inflight) >= limit:
            send(error_frame(frame_id, RateLimited(f"At most {limit} requests may run at once on one socket.")))
            return False
        return True

    def _start(self, frame_id: str, work: Coroutine[Any, Any, None], resumed: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"ws-request:{frame_id}")
        entry = _InFlight(task)
        entry.resumed = resumed
        self.inflight[frame_id] = entry
        task.add_done_callback(lambda _t: self._ended(frame_id, entry))

    def _cancelled_by_client(self, frame_id: str) -> bool:
        entry = self.inflight.get(frame_id)
        return entry is not None and entry.cancelled and not self._outbox.closing

    async def _run_resume(self, frame_id: str, stream_id: str, last_event_id: str | None) -> None:
        writer = RequestWriter(self._outbox, frame_id, stream_id)
        try:
            await resume_on_socket(
                writer,
                self._chat,
                self._resumes,
                self._caller,
                stream_id,
                last_event_id,
                lambda: self._cancelled_by_client(frame_id),
            )
        finally:
            self.inflight.pop(frame_id, None)

    def _ended(self, frame_id: str, entry: _InFlight) -> None:
        """The request's task is done. The entry lets go of it: a cancelled task keeps its
        exception, whose traceback holds the request's frame, which holds the entry (a cycle the
        collector would have to find). A task cancelled before its first step never ran its body,
        so its cleanup happens here."""
        entry.task = None
        if self.inflight.get(frame_id) is not entry:
            return  # the request ran and cleaned up after itself
        del self.inflight[frame_id]
        if entry.cancelled and not self._outbox.closing:
            self._answer_cancelled(frame_id, entry.stream)
        elif entry.stream is not None:
            entry.stream.close(CANCELLED if entry.cancelled else CLIENT_DISCONNECTED)

    def _answer_cancelled(self, frame_id: str, stream: ChatStream | None) -> None:
        """A request cancelled before its stream was pumped: its one done frame, and its outcome."""
        if stream is None:
            RequestWriter(self._outbox, frame_id, "").answer_cancelled(None)
            return
        stream.request_cancel()
        stream.end_cancelled(RequestWriter(self._outbox, frame_id, stream.id))

    async def _run_request(self, frame_id: str, request: ChatCompletionInput) -> None:
        entry = self.inflight.get(frame_id)
        if entry is not None:
            entry.started = True
        started = time.perf_counter()
        try:
            # Allow-list, limits and budget: a refusal is this id's error frame (403 / 429).
            stream = await self._chat.open_admitted(
                request, self._caller, "websocket", started_at=started, traceparent=self._traceparent
            )
        except GatewayError as exc:
            self.inflight.pop(frame_id, None)
            RequestWriter(self._outbox, frame_id, "").error(exc)
            return
        if entry is not None:
            entry.stream = stream
            if entry.cancelled:
                # Cancelled before it ran: no provider call is made (the stream's source was never
                # pulled), and the request still ends with its one done frame.
                self.inflight.pop(frame_id, None)
                self._answer_cancelled(frame_id, stream)
                return
        await self._relay(frame_id, stream)

    async def _relay(self, frame_id: str, stream: ChatStream) -> None:
        try:
            await stream.pump(RequestWriter(self._outbox, frame_id, stream.id))
        except asyncio.CancelledError:
            if not self._cancelled_by_client(frame_id):
                raise
            # The client's cancel: the pump answered it (done frame "cancelled"); the task ends here.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except SlowConsumer:
            pass  # the socket is being closed with 1013; the stream ended as the client's
        except Exception as exc:
            logger.error(
                "ws_request_failed",
                request_id=self._request_id,
                id=frame_id,
                error=type(exc).__name__,
                exception=traceback_text(exc, self._quote),
            )
            RequestWriter(self._outbox, frame_id, stream.id).error(self.public_error(exc))
        finally:
            self.inflight.pop(frame_id, None)
            context = RequestContext(self._request_id or "")
            context.key, context.stream = self._caller.name, stream
            self._info_line("ws_request", {"id": frame_id, **context.log_fields()})
