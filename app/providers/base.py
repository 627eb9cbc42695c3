"""What the chat domain needs from a provider, and the chunk it gets back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

from app.errors import GatewayError
from app.protocol.openai import ChatCompletionInput


class Usage(msgspec.Struct, frozen=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Chunk(msgspec.Struct, frozen=True, gc=False):
    """One ``chat.completion.chunk``: its JSON bytes, ready to frame, plus what the gateway reads of it.

    ``gc=False``: never tracked by the garbage collector (it holds bytes, strings and a ``Usage``, so it
    can be part of no cycle), which matters for the millions a resume store keeps (``StreamEvent``).

    Keeping the encoded bytes lets SSE and WebSocket framers (and the relay fast path) forward
    the provider's chunk without decoding and re-encoding it.
    """

    raw: bytes
    has_content: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    #: A chunk with no choices that only carries usage (the `include_usage` chunk).
    usage_only: bool = False
    #: Output tokens this chunk carries, as estimated from its text (``estimate_text_tokens``): what
    #: a call is charged when the provider's usage never arrives.
    tokens: int = 0


def estimate_text_tokens(text: str) -> int:
    """Tokens in ``text``, erring high: four ASCII characters a token, one per other character
    (CJK and most non-Latin scripts run about a token a character)."""
    if not text:
        return 0
    return (len(text) + 3) // 4 if text.isascii() else len(text)


class Completion(msgspec.Struct, frozen=True):
    """A whole ``chat.completion`` object, already encoded."""

    raw: bytes
    usage: Usage | None = None


#: What one event of a provider's stream stands for, when handed on in push mode: a chunk, the
#: error it reports (or that reading it became), or None for the stream's clean end.
Item = Chunk | GatewayError | None


class PushSink(Protocol):
    """Takes a stream's events from the provider connection's own callbacks (``RelayStream.push``)."""

    def take(self, items: list[Item]) -> bool:
        """The events of one read, in order; the end (None or an error), if there, is the last.
        False: the reader is full; no more come until the source's ``resume``."""
        ...


class Provider(Protocol):
    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        """One non-streaming completion; raises ``GatewayError``."""
        ...

    def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        """An async iterator of chunks; raises ``GatewayError``; closing it closes the upstream call."""
        ...

    async def aclose(self) -> None: ...


def asking_for_usage(stream_options: Any) -> dict[str, Any]:
    """The upstream's ``stream_options``: the gateway always asks for usage (its token metrics are
    honest that way); the stream drops the usage-only chunk for clients that did not ask."""
    return {**(stream_options if isinstance(stream_options, dict) else {}), "include_usage": True}


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
    )
