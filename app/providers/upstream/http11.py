"""An HTTP/1.1 connection: one call at a time, the reply parsed by httptools (uvicorn's parser).

A request is one ``transport.write``; the reply's body goes from the parser to the response once
per socket read: the parser calls back once per HTTP chunk, and a provider's events that arrive in
one read (a stream's last content chunk, its finish chunk, usage and ``[DONE]``, or a burst of fast
tokens) are joined first, so that the relay splits them together and the client gets them in one
write instead of one each. A reader that falls more than HIGH_WATER bytes behind
pauses the socket (TCP back-pressure reaches the provider); reading resumes as it catches up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from app.providers.upstream.connection import ACTIVE, CLOSED, IDLE, Connection
from app.providers.upstream.errors import StaleConnection, UpstreamConnectionError
from app.providers.upstream.response import ResponseState

if TYPE_CHECKING:
    from app.providers.upstream.request import RequestTemplate
    from app.providers.upstream.response import UpstreamResponse

_SENT, _RECEIVING = ResponseState.SENT, ResponseState.RECEIVING


class HTTP11Connection(Connection):
    __slots__ = ("_body", "_paused", "parser", "response")

    def __init__(self, on_change: Callable[[Connection], None]) -> None:
        super().__init__(on_change)
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self._paused = False
        self._body: list[bytes] = []  # this read's body pieces, not yet handed to the response

    async def send(self, response: UpstreamResponse, request: RequestTemplate, body: bytes) -> None:
        if self.state is CLOSED or self.transport is None:
            # Closed between being handed out and now: nothing was written, so sending elsewhere is safe.
            raise StaleConnection("the connection closed before the request was written")
        self.state = ACTIVE
        self.response = response
        self.transport.write(request.h1(body))

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            self.close()  # bytes nobody asked for: this connection's state is unknown
            return
        if response.state is _SENT:
            response.state = _RECEIVING  # from here on the provider has handled the call: never resent
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._hand_body()  # what was read before the error still goes first
            self.close(UpstreamConnectionError(f"The provider's reply was not valid HTTP: {exc}"))
            return
        self._hand_body()

    def _hand_body(self) -> None:
        body = self._body
        if body and self.response is not None:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            self.response._on_body(data)
        else:
            body.clear()

    def _end(self, error: UpstreamConnectionError | None) -> None:
        response, self.response = self.response, None
        if response is None:
            return
        if error is not None:
            response._on_lost(error)
        elif response.state is _RECEIVING and response.status and not _framed(response):
            response._on_complete()  # a body delimited by the connection closing has ended
        elif response.state is _SENT and self.served:
            response._on_lost(StaleConnection("a kept-alive connection was closed by the provider"))
        else:
            response._on_lost(UpstreamConnectionError("the provider closed the connection mid-reply"))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The transport's last callback. The parser holds this connection's bound callbacks: dropped,
        # a closed connection is freed at once instead of waiting, as a cycle, for the collector.
        del self.parser

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response._on_headers(self.parser.get_status_code(), self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self._body.append(body)  # handed on once the read is parsed (``_hand_body``)

    def on_message_complete(self) -> None:
        self._hand_body()  # the body before its end
        if self.response is not None:  # (its reader may have closed the connection on the body)
            self.response._on_complete()

    # -- what a response does with it ---------------------------------------------------------------

    def backlogged(self) -> None:
        if not self._paused and self.state is not CLOSED and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def consumed(self, response: UpstreamResponse, nbytes: int) -> None:
        if self._paused and self.state is not CLOSED and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def finish(self, response: UpstreamResponse, *, reusable: bool) -> None:
        if response is not self.response:
            return  # already ended (the connection was lost first)
        self.response = None
        if reusable and self.state is ACTIVE:
            self.served += 1
            self.consumed(response, 0)  # reading resumes if a slow reader had paused it
            self.state = IDLE
            self.on_change(self)
        else:
            self.close()


def _framed(response: UpstreamResponse) -> bool:
    return "content-length" in response.headers or "chunked" in response.headers.get("transfer-encoding", "")
