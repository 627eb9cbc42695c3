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

from collections.abc import Callable, Mapping
from typing import Literal

from app.domain.chat_request import ChatCompletionInput, NativeRequest
from app.domain.chunks import Completion, Item
from app.domain.errors import GatewayError
from app.providers.anthropic_chunks import StreamReader, completion_of, error_from_reply
from app.providers.anthropic_target import anthropic_body
from app.providers.relay import Relay, RelayStream
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

    __slots__ = ()

    def __init__(self, relay: AnthropicRelay, request: ChatCompletionInput, deployment: str) -> None:
        super().__init__(relay, request, deployment)
        self._read = _event_reader(relay)


def _event_reader(relay: Relay) -> Callable[[bytes], Item | Literal[False]]:
    """One stream's reader of Anthropic's events: the item each stands for, False for one with none
    of its own (message_start, ping, a block's stop); an error redacted as the relay's own are. A
    closure over the reader rather than a method of the stream: the stream holding its own bound
    method would be a reference cycle per stream."""
    read, quote = StreamReader().read, relay._quote.quote

    def event(data: bytes) -> Item | Literal[False]:
        item = read(data)
        return quote(item) if isinstance(item, GatewayError) else item

    return event
