"""What the chat domain needs from a provider, and the chunk it gets back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion, Item


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
