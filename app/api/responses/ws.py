"""The Responses API's WebSocket mode (docs/responses.md): ``response.create`` frames in, the SSE events out,
one JSON text frame each.

One response runs at a time per socket (a create while one runs -> an ``error`` event, code
``response_in_progress``). The socket remembers its last response's whole conversation, so
``previous_response_id`` naming it works even with ``store: false``. Every error is an
``{"type": "error", "status", "error"}`` event and the socket stays open; a frame over
``websocket.max_frame_bytes`` closes it with 1009, a failed gateway auth with 1008 (after the
handshake, as for chat sockets). The socket leaving cancels the running response's provider call.

Frames go out through the socket's ``Outbox`` (``app/api/outbox.py``, the chat socket's too): written at once
when the socket takes them, so a relayed stream's events are pushed from the provider's callback as
chat frames are (``app/core/push.py``), else queued in order; a client that cannot keep up with
``websocket.send_queue_frames`` frames is closed with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import structlog
from litestar import WebSocket

from app.access.keys import ANONYMOUS, SUBPROTOCOL, GatewayKeys
from app.access.origins import OriginPolicy
from app.api.outbox import CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION, Outbox, SlowConsumer
from app.api.responses.events import Event
from app.api.responses.request import validate_create
from app.api.responses.service import ResponseRun, ResponsesService
from app.api.responses.store import StoredResponse
from app.api.responses.wire import CREATE_FRAME, ResponsesCreate
from app.api.socket_receive import receive_frames
from app.config.settings import Settings
from app.core.drain import Drain
from app.core.stream import ChatStream
from app.domain.chat_request import decode_json
from app.domain.errors import GatewayError, InvalidRequest, public_error
from app.domain.events import ClientLeft, StreamEvent

logger = structlog.get_logger("app.responses")

_encode = msgspec.json.encode


#: A ``response.create``'s ``stream_id``: what the OpenAI SDK's session lanes route events by.
_STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,256}")


def error_event(error: GatewayError, tag: bytes = b"") -> bytes:
    return tagged(_encode({"type": "error", "status": error.status, "error": error.body().error}), tag)


def stream_tag(stream_id: object) -> bytes:
    """The head that puts a create's ``stream_id`` first in each of its events (``b""``: none sent)."""
    if stream_id is None:
        return b""
    if not isinstance(stream_id, str) or _STREAM_ID.fullmatch(stream_id) is None:
        raise InvalidRequest(
            "`stream_id` must be 1-256 ASCII letters, digits, underscores, hyphens or periods.",
            code="invalid_parameter",
            param="stream_id",
        )
    return b'{"stream_id":%b,' % _encode(stream_id)


def tagged(event: bytes, tag: bytes) -> bytes:
    """``event`` (a JSON object) with the create's ``stream_id`` as its first field."""
    return tag + event[1:] if tag else event


class _SocketWriter:
    """A chat stream's events as Responses event frames on this socket (a ``StreamWriter``, and a
    ``DirectWriter`` when the outbox writes synchronously)."""

    __slots__ = ("_can_push", "_held", "_send_all", "_tag", "run")

    def __init__(self, outbox: Outbox, run: ResponseRun, tag: bytes = b"") -> None:
        self._send_all = outbox.send_all
        self._can_push = outbox.can_push
        self.run = run
        self._tag = tag
        self._held: list[StreamEvent] = []

    def _write(self, events: list[Event]) -> None:
        # One write for all of them when the socket takes them now (``Outbox.send_all``); raises
        # SlowConsumer (a ClientLeft) when the client cannot keep up.
        tag = self._tag
        if tag:
            self._send_all([tag + data[1:] for _kind, _seq, data in events])
        else:
            self._send_all([data for _kind, _seq, data in events])

    # Pushed (``DirectWriter``): the outbox's queue absorbs a slow reader and bounds it with 1013.

    def can_write_now(self) -> bool:
        return self._can_push

    def write_now(self, events: list[StreamEvent]) -> bool:
        self._write(self._events_of(events))
        return True

    def _events_of(self, events: list[StreamEvent]) -> list[Event]:
        feed = self.run.feed
        out: list[Event] = []
        for event in events:
            if event.chunk is not None:
                out += feed(event.chunk.raw)
        return out

    def hold(self, events: list[StreamEvent]) -> None:
        self._held += events

    async def writable(self) -> None:
        return None

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        self._write(self.run.feed(raw))

    async def end(self, event: StreamEvent) -> None:
        # What was held for the end and the end's own events: one write.
        held, self._held = self._held, []
        events = self._events_of(held) if held else []
        events += await self.run.finish(event)
        self._write(events)

    def cancelled(self, stream: ChatStream) -> None:
        return None


class ResponsesSocketSession:
    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        service: ResponsesService,
        settings: Settings,
        keys: GatewayKeys,
        *,
        drain: Drain | None = None,
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.socket = socket
        self.service = service
        self.settings = settings
        self.keys = keys
        self.origins = OriginPolicy(settings.server.cors_origins)
        self.drain = drain
        self.caller = ANONYMOUS
        self.running: asyncio.Task[None] | None = None
        #: The socket's last response, with its whole conversation as input (``previous_response_id``).
        self.memory: dict[str, StoredResponse] = {}
        self._outbox = Outbox(socket, settings.websocket.send_queue_frames)
        self._on_open = on_open
        self._on_close = on_close
        self._closed = False

    async def run(self) -> None:
        offered: list[str] = list(self.socket.scope.get("subprotocols") or [])
        origin = self.socket.headers.get("origin")
        if not self.origins.allows(origin, self.socket.headers.get("host"), self.socket.scope.get("scheme", "ws")):
            await self.socket.close(code=CLOSE_POLICY_VIOLATION)
            return
        await self.socket.accept(subprotocols=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if self._on_open is not None:
            self._on_open()
        try:
            try:
                self.caller = self.keys.from_websocket(offered, self.socket.headers)
            except GatewayError as exc:
                await self.socket.close(code=CLOSE_POLICY_VIOLATION, reason=exc.message[:120])
                return
            self._outbox.start()
            if self.drain is not None:
                self.drain.track_session(self)
            try:
                await self._receive_loop()
            finally:
                self._closed = True
                self._outbox.closing = True
                if self.drain is not None:
                    self.drain.session_closed(self)
                running, self.running = self.running, None
                if running is not None:
                    # Not kept: a cancelled task keeps its exception, whose traceback holds
                    # ``_respond``'s frame, which holds this session (a cycle for the collector).
                    running.cancel()
                    await asyncio.gather(running, return_exceptions=True)
                await self._outbox.stop()
        finally:
            if self._on_close is not None:
                self._on_close()

    async def _receive_loop(self) -> None:
        # As the chat socket's: a response's task starts in the turn its frame arrived in.
        await receive_frames(self.socket, self._outbox, self.settings.websocket.max_frame_bytes, self._take)

    def _take(self, data: str | bytes) -> bool:
        """One client frame handled (the session goes on whatever it held)."""
        try:
            self._frame(data)
        except Exception as exc:  # a frame never takes the socket down
            logger.error("responses_ws_frame_failed", exc_info=exc)
            self._send_now(error_event(public_error(exc, production=self.settings.production)))
        return True

    def _frame(self, data: str | bytes) -> None:
        tag = b""
        try:
            frame = decode_json(data, "frame")
            if not isinstance(frame, dict) or frame.get("type") != CREATE_FRAME:
                raise InvalidRequest(f"A frame must be an object of type `{CREATE_FRAME}`.", param="type")
            # Its events and errors carry its ``stream_id`` back, so that a client routing a
            # session's events by it (the OpenAI SDK's lanes) gets them; responses still run one at a time.
            tag = stream_tag(frame.get("stream_id"))
            if self.drain is not None and self.drain.refusing:
                raise self.drain.refusal()
            if self.running is not None and not self.running.done():
                raise InvalidRequest(
                    "A response is already running on this socket: one at a time.", code="response_in_progress"
                )
            generate = frame.get("generate", True)
            if not isinstance(generate, bool):
                raise InvalidRequest("`generate` must be a boolean.", param="generate")
            body = {k: v for k, v in frame.items() if k not in ("type", "stream", "stream_id", "generate")}
            create, _ = validate_create(body)
            if create.background:
                raise InvalidRequest(
                    "`background` is not available over a WebSocket.", code="unsupported_parameter", param="background"
                )
        except GatewayError as exc:
            self._send_now(error_event(exc, tag))
            return
        work = self._respond(create, tag) if generate else self._prepare_only(create, tag)
        self.running = asyncio.get_running_loop().create_task(self._answer(work, tag), name="responses-ws")

    async def _answer(self, work: Coroutine[Any, Any, None], tag: bytes) -> None:
        """One create's work; however it fails, an error event on this socket, which stays open."""
        try:
            await work
        except ClientLeft:
            return
        except GatewayError as exc:
            await self.send(error_event(exc, tag))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("responses_ws_failed", exc_info=exc)
            await self.send(error_event(public_error(exc, production=self.settings.production), tag))

    async def _prepare_only(self, create: ResponsesCreate, tag: bytes) -> None:
        """``generate: false`` (a client preparing its next turn, as the Codex CLI's prewarm does): the
        response is made of the input alone, no provider is called and nothing is charged; its id
        serves as ``previous_response_id`` for the turn that follows."""
        prepared = await self.service.prepare(create, self.caller, self.memory)
        # The model known and allowed, and counted against the key's requests a minute; its input is
        # not counted against the key's tokens (no provider reads it).
        async with self.service.chat.unbilled(prepared.chat.model, self.caller):
            run = ResponseRun(self.service, prepared, self.caller.scope)
            events = run.events.start() + run.events.finish(None)
            snapshot = run.events.snapshot()
            if create.store is not False:
                await self.service.save(run.record(snapshot))
        self._remember(run, snapshot)
        self._send_all([tagged(data, tag) for _kind, _seq, data in events])

    def _remember(self, run: ResponseRun, snapshot: dict[str, Any]) -> None:
        self.memory = {
            run.id: StoredResponse(
                id=run.id,
                owner=self.caller.scope,
                response=snapshot,
                input=run.prepared.conversation,
                previous_response_id=None,
            )
        }

    async def _respond(self, create: ResponsesCreate, tag: bytes) -> None:
        started = time.perf_counter()
        run: ResponseRun | None = None
        try:
            prepared = await self.service.prepare(create, self.caller, self.memory)
            admission = await self.service.chat.admit(prepared.chat, self.caller)
            run = await self.service.open(
                prepared,
                self.caller,
                admission,
                "websocket",
                started_at=started,
                traceparent=self.socket.headers.get("traceparent"),
            )
            assert run.stream is not None
            with run.writing():
                await run.stream.pump(_SocketWriter(self._outbox, run, tag))
        finally:
            # A response that ended (in-band errors included) is the socket's last, whatever followed.
            if run is not None and run.events.ended:
                self._remember(run, run.events.snapshot())

    def _send_all(self, frames: list[bytes]) -> None:
        if self._closed or self._outbox.closing:
            return
        with contextlib.suppress(SlowConsumer):
            self._outbox.send_all(frames)

    async def send(self, data: bytes) -> bool:
        """One frame (written or queued at once); False when the socket can no longer take it."""
        return self._send_now(data)

    def _send_now(self, data: bytes) -> bool:
        if self._closed or self._outbox.closing:
            return False
        try:
            self._outbox.send(data)
        except SlowConsumer:
            return False
        return True

    async def close_for_shutdown(self) -> None:
        """The drain's last phase: the running response ended in-band and its frames went out;
        then close with 1001."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        while self.running is not None and not self.running.done() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self._outbox.flush(deadline)
        await self._outbox.close_now(CLOSE_GOING_AWAY, "server shutting down")
