"""HTTP/2 for the fake upstream's TLS mode (``python -m loadtests.upstream --tls --ca-file PATH``).

A TLS connection's protocol is known only once the handshake is done, which is when asyncio calls
``connection_made``: ``AlpnSwitch`` then hands the transport to ``H2Conn`` when ALPN picked ``h2``,
to the HTTP/1.1 ``Conn`` otherwise (``transport.set_protocol``, so that it is not in the data path).

``H2Conn`` serves the same routes with the same ``Upstream`` (payloads encoded once, timers, phases,
counters) as the HTTP/1.1 server: every request stream is a ``H2Call`` with its own timer, as a
provider's streams on one connection are. ``h2`` frames the bytes; flow control is kept simple:
what a stream's window cannot take waits in the stream and goes out when a WINDOW_UPDATE comes.
The server announces h2's default of 100 concurrent streams, as a provider's front end would, so
at higher concurrency the gateway's pool opens more connections.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from loadtests.upstream import CHAT_PATHS, Conn, Payload, Upstream, _error_body

_SSE_HEADERS = [(b":status", b"200"), (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class AlpnSwitch(asyncio.Protocol):
    """The first protocol of every TLS connection: picks HTTP/2 or HTTP/1.1 by what ALPN chose."""

    def __init__(self, up: Upstream) -> None:
        self.up = up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.up.tls_connections += 1
        ssl_object = transport.get_extra_info("ssl_object")
        speaks_h2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        protocol: asyncio.Protocol = H2Conn(self.up) if speaks_h2 else Conn(self.up)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class H2Out:
    """An answer's bytes that the stream's flow-control window could not take yet."""

    __slots__ = ("ending", "pending", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.pending = b""
        self.ending = False  # END_STREAM goes with the last pending byte


class H2Call(H2Out):
    """One chat call's stream: its payload and where it is in it."""

    __slots__ = ("busy", "conn", "due", "index", "payload", "stream", "usage")

    def __init__(self, conn: H2Conn, stream_id: int, payload: Payload, stream: bool, usage: bool) -> None:
        super().__init__(stream_id)
        self.conn = conn
        self.payload = payload
        self.stream = stream
        self.usage = usage
        self.busy = True
        self.index = 0
        self.due = 0.0

    def tick(self) -> None:
        if not self.busy:
            return  # reset by the client, or its connection is gone
        p = self.payload
        conn = self.conn
        if not self.stream:
            self.done()
            conn.respond(self.stream_id, b"200", p.json_body)
            return
        i = self.index
        event = p.sse_events[i]
        i += 1
        self.index = i
        if i >= len(p.sse_events):
            self.done()
            conn.send(self, event + (p.tail_usage_events if self.usage else p.tail_events), end=True)
            return
        conn.send(self, event, end=False)
        self.due += p.gap_s
        conn.up.schedule(self, self.due)

    def done(self) -> None:
        self.busy = False
        self.conn.up.call_ended(completed=True)

    def cancel(self) -> None:
        if self.busy:
            self.busy = False
            self.conn.up.call_ended(completed=False)


class H2Conn(asyncio.Protocol):
    """One HTTP/2 connection: request streams side by side, each answered on its own timer."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, tuple[bytes, bytes, bytearray]] = {}  # stream -> (method, path, body so far)
        self.calls: dict[int, H2Call] = {}  # chat calls whose answer is not all sent yet
        self.stalled: dict[int, H2Out] = {}  # stream -> the answer whose bytes wait for window room

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        up = self.up
        up.connections += 1
        up.open_connections += 1
        up.h2_connections += 1
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.open_connections -= 1
        for call in self.calls.values():
            call.cancel()
        self.calls.clear()
        self.stalled.clear()
        self.transport = None

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()  # h2 has queued a GOAWAY saying why
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)  # bytes: header_encoding=None
                self.requests[event.stream_id] = (headers.get(b":method", b""), headers.get(b":path", b""), bytearray())
            elif isinstance(event, h2.events.DataReceived):
                request = self.requests.get(event.stream_id)
                if request is not None:
                    request[2].extend(event.data or b"")
                # Give the window back at once: bodies are small, and a real server reads them whole.
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    self._dispatch(event.stream_id, *request)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)
                self.stalled.pop(event.stream_id, None)
                call = self.calls.pop(event.stream_id, None)
                if call is not None:
                    call.cancel()
            elif isinstance(event, h2.events.WindowUpdated):
                for out in list(self.stalled.values()):
                    self._pump(out)
            elif isinstance(event, h2.events.ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    def _dispatch(self, stream_id: int, method: bytes, target: bytes, body: bytearray) -> None:
        up = self.up
        up.requests += 1
        up.h2_requests += 1
        path, _, query = target.decode("latin-1").partition("?")
        path = path.rstrip("/")
        if method != b"POST" or path not in CHAT_PATHS:
            status, _, answer = up.answer(method.decode("latin-1"), path, query)
            self.respond(stream_id, str(status).encode(), answer)
            return
        call = up.chat_request(bytes(body))
        if isinstance(call, str):
            self.respond(stream_id, b"400", _error_body(call))
            return
        payload, stream, usage = call
        h2_call = self.calls[stream_id] = H2Call(self, stream_id, payload, stream, usage)
        if stream:
            self.h2.send_headers(stream_id, _SSE_HEADERS)
        h2_call.due = up.begin(payload, stream)
        up.schedule(h2_call, h2_call.due)

    def respond(self, stream_id: int, status: bytes, body: bytes) -> None:
        """A whole JSON answer: headers, then the body as the window allows."""
        self.calls.pop(stream_id, None)
        try:
            headers = [(b":status", status), (b"content-type", b"application/json")]
            self.h2.send_headers(stream_id, [*headers, (b"content-length", str(len(body)).encode())])
        except h2.exceptions.StreamClosedError:
            return
        self.send(H2Out(stream_id), body, end=True)

    def send(self, call: H2Out, data: bytes, end: bool) -> None:
        h2c = self.h2
        sid = call.stream_id
        if (
            not call.pending
            and len(data) <= h2c.max_outbound_frame_size
            and len(data) <= h2c.local_flow_control_window(sid)
        ):
            try:
                h2c.send_data(sid, data, end_stream=end)  # the usual case: one DATA frame, sent now
            except h2.exceptions.StreamClosedError:
                pass  # the client reset it in the bytes just read: nothing to send to
            if end:
                self.calls.pop(sid, None)
        else:
            call.pending += data
            call.ending = end
            self._pump(call)
        self.flush()

    def _pump(self, call: H2Out) -> None:
        """Send what the window takes of a call's pending bytes; the rest waits for a WINDOW_UPDATE."""
        h2c = self.h2
        sid = call.stream_id
        try:
            while call.pending:
                room = min(len(call.pending), h2c.max_outbound_frame_size, h2c.local_flow_control_window(sid))
                if room <= 0:
                    self.stalled[sid] = call
                    return
                piece, call.pending = call.pending[:room], call.pending[room:]
                h2c.send_data(sid, piece, end_stream=call.ending and not call.pending)
        except (h2.exceptions.StreamClosedError, h2.exceptions.FlowControlError):
            call.pending = b""  # the client reset the stream meanwhile
        self.stalled.pop(sid, None)
        if call.ending:
            self.calls.pop(sid, None)
