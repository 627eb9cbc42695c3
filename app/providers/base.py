"""What the chat domain needs from a provider, and the chunk it gets back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeGuard, runtime_checkable

from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion, Item


class PushSink(Protocol):
    """Takes a stream's events from the provider connection's own callbacks (``RelayStream.push``)."""

    def take(self, items: list[Item]) -> bool:
        """The events of one read, in order; the end (None or an error), if there, is the last.
        False: the reader is full; no more come until the source's ``resume``."""
        ...


_IMPLEMENTS: dict[tuple[type, Any], bool] = {}


def implements(value: object, protocol: Any) -> bool:
    """``isinstance(value, protocol)`` for a runtime-checkable Protocol, asked once per type: the
    check itself walks the protocol's members (microseconds), and it is asked once per stream."""
    key = (type(value), protocol)
    known = _IMPLEMENTS.get(key)
    if known is None:
        known = _IMPLEMENTS[key] = isinstance(value, protocol)
    return known


@runtime_checkable
class PushSource(Protocol):
    """A stream source that can hand its events on from the provider connection's own callback
    (``RelayStream``); a consumer asks once per stream (``can_push``) whether its source is one."""

    #: The next chunk (or the end) has already arrived with this one: pulling it will not wait.
    more: bool

    def push(self, sink: PushSink) -> bool:
        """Hand the remaining events to ``sink`` from now on; False when it cannot (nothing changed)."""
        ...

    def resume(self) -> None:
        """The sink, which had said it was full, takes events again."""
        ...


def can_push(source: object) -> TypeGuard[PushSource]:
    return implements(source, PushSource)


class Provider(Protocol):
    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        """One non-streaming completion; raises ``GatewayError``."""
        ...

    def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        """An async iterator of chunks; raises ``GatewayError``; closing it closes the upstream call."""
        ...

    async def aclose(self) -> None: ...


async def close_quietly(source: AsyncIterator[Chunk]) -> None:
    """Close a provider's stream (its upstream call ends), never raising: a provider's cleanup
    failing must not hide what is being handled, nor surface as an unretrieved task error."""
    aclose = getattr(source, "aclose", None)  # an AsyncIterator need not have it; generators do
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass


def asking_for_usage(stream_options: Any) -> dict[str, Any]:
    """The upstream's ``stream_options``: the gateway always asks for usage (its token metrics are
    honest that way); the stream drops the usage-only chunk for clients that did not ask."""
    return {**(stream_options if isinstance(stream_options, dict) else {}), "include_usage": True}
