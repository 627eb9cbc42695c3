"""An HTTP/2 connection: many calls side by side, framing, HPACK and flow control by ``h2``.

``h2`` is the library httpx uses. Each stream keeps the protocol's default 64 KB receive window and
its received bytes are acknowledged as the relay reads them, so a slow reader holds back its own
stream only; the connection's window is made large so that such a stream cannot stall the others.
Calls the provider refused (REFUSED_STREAM before any reply) or cut by GOAWAY before handling them
fail as ``StaleConnection``, which the pool sends once more on another connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from app.providers.upstream.connection import ACTIVE, CLOSED, IDLE, Connection
from app.providers.upstream.errors import StaleConnection, UpstreamConnectionError
from app.providers.upstream.response import ResponseState

if TYPE_CHECKING:
    from app.providers.upstream.request import RequestTemplate
    from app.providers.upstream.response import UpstreamResponse

#: An HTTP/2 connection's receive window on top of the protocol's 64 KB.
CONNECTION_WINDOW = 16 * 1024 * 1024

_SENT, _RECEIVING, _FAILED = ResponseState.SENT, ResponseState.RECEIVING, ResponseState.FAILED


class HTTP2Connection(Connection):
    __slots__ = ("_h2", "going_away", "streams", "window_open")

    http2 = True

    def __init__(self, on_change: Callable[[Connection], None]) -> None:
        super().__init__(on_change)
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=False)
        )
        self.streams: dict[int, UpstreamResponse] = {}
        self.going_away = False  # GOAWAY received (or stream ids used up): no new calls on it
        self.window_open = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW)
        self._flush()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.state is not CLOSED and self.transport is not None:
            self.transport.write(data)

    def has_room(self) -> bool:
        return (
            self.state is not CLOSED
            and not self.going_away
            and len(self.streams) < self._h2.remote_settings.max_concurrent_streams
        )

    async def send(self, response: UpstreamResponse, request: RequestTemplate, body: bytes) -> None:
        if self.state is CLOSED:
            raise StaleConnection("the connection closed before the request was written")
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError as exc:
            self.going_away = True
            raise StaleConnection("the connection has used up its stream ids") from exc
        self.state = ACTIVE
        response.stream_id = stream_id
        self.streams[stream_id] = response
        self._h2.send_headers(stream_id, request.h2(body), end_stream=not body)
        self._flush()
        view = memoryview(body)
        while view:
            if response.state is _FAILED:
                assert response.error is not None
                raise response.error
            room = min(self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size)
            if room <= 0:
                # The provider's flow-control window is full: wait for it to open (bounded by the
                # caller's own deadline, which cancels this).
                self.window_open.clear()
                await self.window_open.wait()
                continue
            self._h2.send_data(stream_id, bytes(view[:room]), end_stream=room >= len(view))
            view = view[room:]
            self._flush()

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.close(UpstreamConnectionError(f"The provider broke the HTTP/2 protocol: {exc}"))
            return
        # A stream's DATA frames of one read go to its response joined (as on HTTP/1.1): the events
        # in them are split together and reach the client in one write.
        body: dict[int, list[bytes]] = {}
        for event in events:
            stream_id = getattr(event, "stream_id", 0) or 0
            if isinstance(event, h2.events.DataReceived):
                response = self.streams.get(stream_id)
                if response is None:  # a stream the relay has let go: keep the connection's window open
                    self._acknowledge(event.stream_id, event.flow_controlled_length)
                    continue
                padding = event.flow_controlled_length - len(event.data)
                if padding:
                    self._acknowledge(event.stream_id, padding)
                if event.data:
                    body.setdefault(stream_id, []).append(event.data)
                continue
            if body:  # what came before this event first
                self._hand_body(body)
            response = self.streams.get(stream_id)
            if isinstance(event, h2.events.ResponseReceived) and response is not None:
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                status = int(headers.pop(":status", "0"))
                response.headers.update(headers)
                response._on_headers(status, True)
            elif isinstance(event, h2.events.StreamEnded) and response is not None:
                del self.streams[event.stream_id]
                response._on_complete()
            elif isinstance(event, h2.events.StreamReset) and response is not None:
                del self.streams[event.stream_id]
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and response.state is _SENT
                error_type = StaleConnection if refused else UpstreamConnectionError
                response._on_lost(error_type(f"The provider reset the stream ({event.error_code!r})"))
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_open.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._going_away(event.last_stream_id or 0)
        if body:
            self._hand_body(body)
        self._flush()
        if self.going_away and not self.streams:
            self.close()

    def _hand_body(self, body: dict[int, list[bytes]]) -> None:
        for stream_id, pieces in body.items():
            response = self.streams.get(stream_id)
            if response is not None:
                response._on_body(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            else:  # let go meanwhile: the connection's window must still get these bytes back
                self._acknowledge(stream_id, sum(map(len, pieces)))
        body.clear()

    def _going_away(self, last_stream_id: int) -> None:
        self.going_away = True
        for stream_id, response in list(self.streams.items()):
            if stream_id > last_stream_id:  # never processed: safe to send again elsewhere
                del self.streams[stream_id]
                response._on_lost(StaleConnection("the provider is closing the connection (GOAWAY)"))
        self.window_open.set()

    def _end(self, error: UpstreamConnectionError | None) -> None:
        if error is not None and self.transport is not None:  # the relay closes it: say so (GOAWAY)
            try:
                self._h2.close_connection()
                self.transport.write(self._h2.data_to_send())
            except h2.exceptions.ProtocolError:
                pass
        lost = error or UpstreamConnectionError("the provider closed the connection mid-reply")
        streams, self.streams = self.streams, {}
        for response in streams.values():
            response._on_lost(lost)
        self.window_open.set()  # a send waiting for window room sees the failure

    # -- what a response does with it ---------------------------------------------------------------

    def consumed(self, response: UpstreamResponse, nbytes: int) -> None:
        self._acknowledge(response.stream_id, nbytes)

    def _acknowledge(self, stream_id: int, nbytes: int) -> None:
        """Acknowledge ``nbytes`` read from a stream, so that the provider may send that much more."""
        if not nbytes or self.state is CLOSED:
            return
        try:
            self._h2.acknowledge_received_data(nbytes, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return  # the stream is gone; nothing left to let through
        self._flush()

    def finish(self, response: UpstreamResponse, *, reusable: bool) -> None:
        # The stream is still listed only if it has not ended: the relay let go early, so reset it.
        if self.streams.pop(response.stream_id, None) is not None:
            try:
                self._h2.reset_stream(response.stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self._flush()
        if self.state is CLOSED:
            return
        if self.streams:
            self.on_change(self)
        elif self.going_away:
            self.close()
        else:
            self.state = IDLE
            self.on_change(self)
