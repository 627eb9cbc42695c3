"""The relay for Anthropic deployments: Messages API requests sent in Anthropic's own API.

The same relay as for OpenAI-wire providers (``relay.py``: its pools, its HTTP client, its bounds,
pulled and pushed streams, its error redaction), with Anthropic's wire in the places that differ:
the request is the client's own Messages body (``anthropic_target.py``), its headers add the
client's ``anthropic-version`` and ``anthropic-beta``, an error reply is read as Anthropic writes
it, and the answer, streamed or whole, is turned into the chat chunks the gateway reads
(``anthropic_chunks.py``). Only Messages API requests take it (``RoutingProvider``): a chat
completions request for an Anthropic model needs the OpenAI -> Anthropic translation LiteLLM has.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.domain.chat_request import ChatCompletionInput, NativeRequest
from app.domain.chunks import Chunk, Completion, Item
from app.domain.errors import GatewayError, UpstreamUnavailable
from app.providers.anthropic_chunks import StreamReader, completion_of, error_from_reply
from app.providers.anthropic_target import anthropic_body
from app.providers.relay import MAX_EVENT_BYTES, Relay, RelayStream, _data_of
from app.providers.relay_target import RelayTarget
from app.providers.upstream import RequestTemplate


def _native(request: ChatCompletionInput) -> NativeRequest:
    native = request.anthropic
    if native is None:  # the routing sends only Messages API requests here
        raise RuntimeError("an Anthropic relay call without its Messages API body")
    return native


class AnthropicRelay(Relay):
    """Streams and completes Messages API requests on Anthropic deployments (``targets``)."""

    def _template(self, target: RelayTarget, request: ChatCompletionInput) -> RequestTemplate:
        headers = _native(request).headers
        if not headers and not request.trace_headers:
            return target.request
        return RequestTemplate(target.url, {**target.headers, **headers, **(request.trace_headers or {})})

    def _body(self, target: RelayTarget, request: ChatCompletionInput, *, stream: bool) -> bytes:
        return anthropic_body(target, _native(request), stream=stream)

    def _reply_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        return error_from_reply(status, body, headers)

    def _completion(self, raw: bytes) -> Completion:
        return completion_of(raw)

    def stream(self, request: ChatCompletionInput, deployment: str) -> AnthropicStream:
        return AnthropicStream(self, request, deployment)


class AnthropicStream(RelayStream):
    """A relayed stream whose events are Anthropic's: each read into the chunk it stands for, if any."""

    __slots__ = ("_reader",)

    def __init__(self, relay: AnthropicRelay, request: ChatCompletionInput, deployment: str) -> None:
        super().__init__(relay, request, deployment)
        self._reader = StreamReader()

    def _split(self, data: bytes) -> list[Item]:
        """The items the events completed by ``data`` stand for, up to and including the stream's end."""
        buffer = self._buffer + data
        if b"\r" in data:  # the whole buffer: a CRLF may be split between two reads
            buffer = buffer.replace(b"\r\n", b"\n")
        items: list[Item] = []
        read = self._reader.read
        while (end := buffer.find(b"\n\n")) >= 0:
            payload = _data_of(buffer[:end])
            buffer = buffer[end + 2 :]
            if payload is None:
                continue
            item = read(payload)
            if item is False:
                continue  # an event with no chunk of its own (message_start, ping, a block's stop)
            if isinstance(item, Chunk):
                items.append(item)
                continue
            items.append(self._relay._quote.quote(item) if isinstance(item, GatewayError) else item)
            self._ended = True
            buffer = b""
            break
        if len(buffer) > MAX_EVENT_BYTES:
            self._ended = True
            buffer = b""
            items.append(UpstreamUnavailable("The provider sent a stream event larger than the gateway accepts."))
        self._buffer = buffer
        return items
