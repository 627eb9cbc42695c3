"""The relay fast path, for deployments whose provider speaks the OpenAI wire format.

LiteLLM still resolves the deployment (URL, credentials, headers, request parameter mapping) once
at start-up and per request (``relay_target.py``); the stream itself is relayed event by event: the
upstream SSE is split into events, each decoded by msgspec only as far as the gateway needs (content
present? finish? usage? error?), and the provider's JSON bytes are handed on untouched for SSE and
WebSocket framing.

The HTTP client is the relay's own (``providers.upstream``): HTTP/1.1 keep-alive, one pool per upstream
origin, a request written in one piece; see that module for why not aiohttp or httpx.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Literal

import msgspec

from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion, Item, reaches_client
from app.domain.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from app.providers.base import PushSink
from app.providers.chunks import completion_usage, error_from_reply, read_chunk
from app.providers.egress import EgressSettings
from app.providers.quoting import ProviderText
from app.providers.relay_target import RelayTarget, request_body
from app.providers.upstream import RequestTemplate, UpstreamConnectionError, UpstreamPool, UpstreamResponse

#: The most one SSE event of a provider's stream may hold before the gateway gives up on it: an
#: event is one chunk (a few hundred bytes; a large tool-call delta, some KB), and a provider that
#: never ends its event must not grow the relay's buffer without bound.
MAX_EVENT_BYTES = 4 * 1024 * 1024
#: The most a provider's whole (non-streamed) answer may hold. A long completion is a few hundred KB,
#: with several choices and log-probabilities a few MB; a provider that sends more (or never stops)
#: gets an error instead of the gateway's memory.
MAX_ANSWER_BYTES = 32 * 1024 * 1024


# -- the relay --------------------------------------------------------------------------------


class Relay:
    """Streams and completes through one keep-alive connection pool per upstream origin."""

    #: Connections per upstream origin. One open stream holds one connection, so this bounds how many
    #: streams a worker relays at once per origin; streams beyond it wait (with heartbeats) for a slot.
    POOL_SIZE = 10_000

    def __init__(
        self,
        targets: dict[str, RelayTarget],
        *,
        pool_size: int = POOL_SIZE,
        quote: ProviderText | None = None,
        egress: EgressSettings | None = None,
    ) -> None:
        self.targets = targets
        self._egress = egress
        self._quote = quote or ProviderText()
        self._pool_size = pool_size
        self._pools: dict[str, UpstreamPool] = {}

    def _pool(self, target: RelayTarget) -> UpstreamPool:
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = UpstreamPool(target.url, limit=self._pool_size, egress=self._egress)
            self._pools[target.origin] = pool
        return pool

    def open_pools(self) -> None:
        for target in self.targets.values():
            self._pool(target)

    # -- the provider's wire: what a subclass for another API changes (anthropic_relay.py) ----------

    def _template(self, target: RelayTarget, request: ChatCompletionInput) -> RequestTemplate:
        if request.trace_headers:
            # A traced request carries its W3C context: a template of its own (only when tracing is on).
            return RequestTemplate(target.url, {**target.headers, **request.trace_headers})
        return target.request

    def _body(self, target: RelayTarget, request: ChatCompletionInput, *, stream: bool) -> bytes:
        return request_body(target, request, stream=stream)

    def _reply_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        return error_from_reply(status, body, headers)

    def _completion(self, raw: bytes) -> Completion:
        """The provider's whole answer as the gateway's ``chat.completion``."""
        try:
            usage = completion_usage(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamUnavailable("The provider's answer was not valid JSON.") from exc
        return Completion(raw=raw, usage=usage)

    # -- the calls ----------------------------------------------------------------------------------

    async def _post(
        self, target: RelayTarget, body: bytes, request: ChatCompletionInput, *, until_body: bool = False
    ) -> UpstreamResponse:
        template = self._template(target, request)
        try:
            response = await self._pool(target).post(template, body, until_body=until_body)
        except (TimeoutError, UpstreamConnectionError, OSError) as exc:
            raise broken(CONNECTING, exc) from exc
        if response.status != 200:
            try:
                error_body = await response.read(limit=65_536)
            except (UpstreamConnectionError, OSError):
                error_body = b""
            finally:
                response.release()
            raise self._quote.quote(self._reply_error(response.status, error_body, response.headers))
        return response

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        target = self.targets[deployment]
        response = await self._post(target, self._body(target, request, stream=False), request)
        try:
            raw = await response.read(limit=MAX_ANSWER_BYTES + 1)
        except (UpstreamConnectionError, OSError) as exc:
            response.close()
            raise broken(ANSWERING, exc) from exc
        except BaseException:  # cancelled (the call's deadline, the client leaving): drop the connection
            response.close()
            raise
        if len(raw) > MAX_ANSWER_BYTES:
            response.close()  # the rest is never read: the provider sees its connection close
            raise UpstreamUnavailable("The provider's answer was larger than the gateway accepts.")
        response.release()
        return self._completion(raw)

    def stream(self, request: ChatCompletionInput, deployment: str) -> RelayStream:
        return RelayStream(self, request, deployment)

    async def open_stream(self, request: ChatCompletionInput, deployment: str) -> UpstreamResponse:
        target = self.targets[deployment]
        return await self._post(target, self._body(target, request, stream=True), request, until_body=True)

    def _item(self, payload: bytes) -> Chunk | GatewayError | None:
        """One event's data: a chunk, the error it stands for, or None for ``[DONE]``."""
        if payload == b"[DONE]":
            return None
        try:
            return read_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = UpstreamUnavailable("The provider sent an unreadable chunk.")
            error.__cause__ = exc
            return error
        except GatewayError as exc:  # the provider reported an error in the stream
            return self._quote.quote(exc)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


class RelayStream:
    """One relayed stream: the upstream SSE split into events, each read as far as the gateway needs.

    Pulled (``__anext__``, one chunk per call) until its consumer asks for the rest to be pushed
    (``push``): from then on every read of the provider's connection is split and handed to the
    sink from the connection's own callback, with no task woken in between.

    ``more`` is true while the next chunk (or the end) has already arrived with this one: pulling it
    will not wait, so a writer may hold this one and write both together (chunks that arrive
    together are written together).
    """

    __slots__ = (
        "_buffer",
        "_deployment",
        "_ended",
        "_include_usage",
        "_pending",
        "_read",
        "_relay",
        "_request",
        "_response",
        "_sink",
        "more",
    )

    def __init__(self, relay: Relay, request: ChatCompletionInput, deployment: str) -> None:
        self.more = False
        self._relay = relay
        self._request = request
        self._include_usage = request.include_usage()  # which chunks surely reach the client
        self._deployment = deployment
        self._response: UpstreamResponse | None = None
        self._buffer = b""
        self._pending: deque[tuple[Item, bool]] = deque()  # split from the last read, not handed out yet
        self._ended = False  # the end (done or an error) has been split off; nothing after it counts
        self._sink: PushSink | None = None
        #: One event's data -> what it stands for (False: nothing); the provider's wire decides.
        self._read: Callable[[bytes], Item | Literal[False]] = relay._item

    def __aiter__(self) -> RelayStream:
        return self

    async def __anext__(self) -> Chunk:
        pending = self._pending
        while not pending:
            if self._ended:
                raise StopAsyncIteration
            response = self._response
            try:
                if response is None:
                    self._response = response = await self._relay.open_stream(self._request, self._deployment)
                data = await response.read_some()
            except (UpstreamConnectionError, OSError) as exc:
                self._let_go(done=False)
                raise broken(STREAMING, exc) from exc
            except BaseException:  # an error reply, a cancelled wait: the provider's call ends now
                self._let_go(done=False)
                raise
            if not data:
                self._let_go(done=False)
                raise UpstreamUnavailable("The provider's stream broke off before it finished.")
            # Every complete event of this read first, so that the writer can be told which chunk has
            # another one right behind it (``more``): those go out together.
            items = self._split(data)
            pending.extend(zip(items, _followed(items, self._include_usage), strict=True))
        item, self.more = pending.popleft()
        if isinstance(item, Chunk):
            return item
        self._let_go(done=item is None)
        if item is None:
            raise StopAsyncIteration
        raise item

    def _split(self, data: bytes) -> list[Item]:
        """The items the events completed by ``data`` stand for, up to and including the stream's end.

        Runs once per provider read on every relayed stream: the usual event (one ``data:`` line)
        is read here; ``_data_of`` reads the others."""
        buffer = self._buffer + data if self._buffer else data
        crlf = b"\r" in buffer
        if crlf:  # the whole buffer: a CRLF may be split between two reads
            buffer = buffer.replace(b"\r\n", b"\n")
        items: list[Item] = []
        read = self._read
        while (end := buffer.find(b"\n\n")) >= 0:
            event = buffer[:end]
            buffer = buffer[end + 2 :]
            if event.startswith(b"data: ") and b"\n" not in event:
                payload = event[6:].rstrip(b"\r") if crlf else event[6:]  # a CR left over once CRLFs became LFs
            else:
                joined = _data_of(event)
                if joined is None:
                    continue
                payload = joined
            item = read(payload)
            if item is False:
                continue  # an event with no item of its own
            items.append(item)
            if not isinstance(item, Chunk):
                self._ended = True
                buffer = b""
                break
        if len(buffer) > MAX_EVENT_BYTES:
            self._ended = True
            buffer = b""
            items.append(UpstreamUnavailable("The provider sent a stream event larger than the gateway accepts."))
        self._buffer = buffer
        return items

    def _let_go(self, *, done: bool, soon: bool = False) -> None:
        """Done with the provider's response: back to the pool once its body has ended cleanly
        (``done``), else its connection is closed at once (the provider sees the client leave).
        ``soon``: on the next loop turn, for a caller inside the connection's own callback (its
        parser may still be in the middle of this read and must not lose its response)."""
        self._ended = True
        response, self._response = self._response, None
        if response is not None:
            let_go = response.release if done else response.close
            if soon:
                response.loop.call_soon(let_go)
            else:
                let_go()

    async def aclose(self) -> None:
        self._sink = None
        self._let_go(done=False)

    # -- pushed ------------------------------------------------------------------------------------

    def push(self, sink: PushSink) -> bool:
        """Hand every remaining event to ``sink`` as it arrives; False (nothing changes) when the
        stream has no open response to push from."""
        response = self._response
        if response is None or (self._ended and not self._pending):
            return False
        self._sink = sink
        taken = True
        if self._pending:  # the rest of the last pulled read comes first
            items = [item for item, _ in self._pending]
            self._pending.clear()
            taken = self._hand(items)
        if self._response is response:
            response.deliver(self, full=not taken)
        return True

    def resume(self) -> None:
        """The sink, which had said it was full, takes events again."""
        if self._response is not None:
            self._response.resume()

    def _hand(self, items: list[Item]) -> bool:
        sink = self._sink
        if sink is None:
            return True
        taken = sink.take(items)
        if self._ended:  # that was the end
            self._sink = None
            self._let_go(done=bool(items) and items[-1] is None, soon=True)
        return taken

    # BodySink: called by the response from the connection's data_received.

    def body(self, data: bytes) -> bool:
        if self._ended:
            return True
        items = self._split(data)
        return self._hand(items) if items else True

    def complete(self) -> None:
        if not self._ended:
            self._ended = True
            self._hand([UpstreamUnavailable("The provider's stream broke off before it finished.")])

    def lost(self, error: Exception) -> None:
        if not self._ended:
            self._ended = True
            self._hand([broken(STREAMING, error)])


#: Where a call to the provider was when its connection failed.
CONNECTING, ANSWERING, STREAMING = "connecting", "answering", "streaming"


def broken(stage: str, exc: BaseException) -> GatewayError:
    """The one mapping of a failed provider connection to the client's error, wherever it failed:
    connecting (a connect timeout is a 504, anything else a 502), reading a whole answer, or
    mid-stream (pulled or pushed)."""
    if stage == CONNECTING:
        if isinstance(exc, TimeoutError):  # connecting took longer than the pool's connect timeout
            return UpstreamTimeout("The provider could not be reached in time.")
        return UpstreamUnavailable(f"The provider could not be reached: {type(exc).__name__}")
    if stage == ANSWERING:
        return UpstreamUnavailable("The provider's answer broke off.")
    return UpstreamUnavailable(f"The provider's stream broke off: {type(exc).__name__}")


def _followed(items: list[Item], include_usage: bool) -> list[bool]:
    """For each item, whether one that surely reaches the client (``reaches_client``) comes after it
    in the same read: a chunk held for one that the stream then drops would wait for the next read."""
    followed, firm = [False] * len(items), False
    for i in range(len(items) - 1, -1, -1):
        followed[i] = firm
        item = items[i]
        firm = firm or not isinstance(item, Chunk) or not item.usage_only or reaches_client(item, include_usage)
    return followed


def _data_of(event: bytes) -> bytes | None:
    """The data of one SSE event of several lines, or of one that is not ``data: ...`` (CRLF
    tolerated); comments and other fields are ignored."""
    lines = [line.rstrip(b"\r") for line in event.split(b"\n")]
    data = [line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in lines]
    parts = [d for d in data if d is not None]
    return b"\n".join(parts) if parts else None
