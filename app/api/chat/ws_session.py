"""One session per chat WebSocket: the handshake (origin, gateway key), the receive loop and the
session's end. What it delegates: the requests in flight to ``SocketRequests`` (``ws_requests.py``:
create, resume, cancel, one done or error frame each) and every outgoing frame to the socket's
bounded send queue (``Outbox``, ``app/api/outbox.py``: a consumer that cannot keep up is closed with 1013).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from litestar import WebSocket

from app.access.keys import SUBPROTOCOL, GatewayKeys
from app.access.origins import OriginPolicy
from app.api.chat.ws_frames import (
    CancelFrame,
    CreateFrame,
    FrameError,
    ResumeFrame,
    decode_client_frame,
    error_frame,
)
from app.api.chat.ws_requests import SocketRequests
from app.api.outbox import CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION, Outbox, SlowConsumer
from app.api.socket_receive import receive_frames
from app.config.settings import Settings
from app.core.drain import Drain
from app.core.service import ChatService
from app.domain.errors import GatewayError, InvalidRequest
from app.observability.log import InfoLine
from app.providers.quoting import ProviderText, traceback_text
from app.resume.service import Resumes

logger = structlog.get_logger("chat.websocket")

#: How long a draining server waits for a socket's requests to send their last frames.
SHUTDOWN_FLUSH_S = 1.5


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
        info_line: InfoLine,
    ) -> None:
        self.socket = socket
        self.chat = chat
        self.settings = settings
        self.keys = keys
        self.origins = origins or OriginPolicy(settings.server.cors_origins)
        self.drain = drain
        self.resumes = resumes
        self._outbox = Outbox(socket, settings.websocket.send_queue_frames)
        self._requests: SocketRequests | None = None  # once the caller is known
        self._on_open = on_open
        self._on_close = on_close
        self._quote = quote
        self._info_line = info_line
        self.request_id = socket.scope.get("state", {}).get("request_id")

    async def run(self) -> None:
        offered: list[str] = list(self.socket.scope.get("subprotocols") or [])
        origin = self.socket.headers.get("origin")
        if not self.origins.allows(origin, self.socket.headers.get("host"), self.socket.scope.get("scheme", "ws")):
            # Closing before accepting refuses the handshake with a 403: a cross-site page gets nothing.
            logger.warning("ws_origin_refused", request_id=self.request_id, origin=(origin or "")[:200])
            await self.socket.close(code=CLOSE_POLICY_VIOLATION)
            return
        await self.socket.accept(subprotocols=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if self._on_open is not None:
            self._on_open()
        try:
            try:
                caller = self.keys.from_websocket(offered, self.socket.headers)
            except GatewayError as exc:
                # Browsers cannot read a refused handshake's status, so refuse after accepting.
                await self.socket.close(code=CLOSE_POLICY_VIOLATION, reason=exc.message[:120])
                return
            requests = self._requests = SocketRequests(
                self._outbox,
                self.chat,
                self.settings,
                caller,
                request_id=self.request_id,
                traceparent=self.socket.headers.get("traceparent"),
                drain=self.drain,
                resumes=self.resumes,
                quote=self._quote,
                info_line=self._info_line,
            )
            self._outbox.start()
            if self.drain is not None:
                self.drain.track_session(self)
            try:
                await self._receive_loop(requests)
            finally:
                if self.drain is not None:
                    self.drain.session_closed(self)
                self._outbox.closing = True
                await requests.cancel_all()
                await self._outbox.stop()
        finally:
            if self._on_close is not None:
                self._on_close()

    async def _receive_loop(self, requests: SocketRequests) -> None:
        # The first frames from the server's queue, the rest from the connection's callback: a
        # request starts in the loop turn its frame arrived in (app/api/socket_receive.py).
        max_bytes = self.settings.websocket.max_frame_bytes
        await receive_frames(self.socket, self._outbox, max_bytes, lambda data: self._take(requests, data))

    def _take(self, requests: SocketRequests, data: str | bytes) -> bool:
        """One client message handled; False when the session must end (a slow consumer)."""
        outbox = self._outbox
        try:
            self._handle_frame(requests, data)
        except SlowConsumer:
            return False
        except Exception as exc:  # a frame must never take the socket (and its other requests) down
            logger.error(
                "ws_frame_failed",
                request_id=self.request_id,
                error=type(exc).__name__,
                exception=traceback_text(exc, self._quote),
            )
            try:
                outbox.send(error_frame(None, requests.public_error(exc)))
            except SlowConsumer:
                return False
        return True

    def _handle_frame(self, requests: SocketRequests, data: str | bytes) -> None:
        try:
            frame = decode_client_frame(data)
        except FrameError as exc:
            self._outbox.send(error_frame(exc.frame_id, InvalidRequest(str(exc))))
            return
        match frame:
            case CreateFrame(id=frame_id, request=body):
                requests.create(frame_id, body)
            case CancelFrame(id=frame_id):
                requests.cancel(frame_id)
            case ResumeFrame(id=frame_id, stream_id=stream_id, last_event_id=last_event_id):
                requests.resume(frame_id, stream_id, last_event_id)

    async def close_for_shutdown(self) -> None:
        """The drain's last phase: once this socket's requests have sent their last frames (the
        drain ended their streams in-band), close it with 1001 (going away)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_FLUSH_S
        requests = self._requests
        while requests is not None and requests.inflight and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self._outbox.flush(deadline)  # what the requests queued, within the same bound
        await self._outbox.close_now(CLOSE_GOING_AWAY, "server shutting down")
