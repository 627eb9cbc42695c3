"""A chat stream's chunk source, translated into Messages API events on the way.

The translation sits between the provider's chunks (after the cache, which keeps chat chunks) and
the stream, so every Anthropic event is one event of the stream: numbered, logged for resumes,
framed by the Messages framing. Both ways a stream takes its chunks are kept: pulled
(``__anext__``), with ``more`` telling the writer that the next event is already here (events one
chunk stands for go out in one write), and pushed from the provider's connection (``push``), where
each read's items are translated before the stream's sink takes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

from app.api.messages.events import MessageEvents
from app.core.closing import close_quietly
from app.domain.chunks import Chunk, Item
from app.providers.base import PushSink


class _TranslatingSink:
    __slots__ = ("_events", "_sink", "held")

    def __init__(self, events: MessageEvents, sink: PushSink, held: list[Chunk]) -> None:
        self._events = events
        self._sink = sink
        #: Events translated before the push began: they go first, with the first items pushed.
        self.held: list[Item] = list(held)

    def take(self, items: list[Item]) -> bool:
        out, self.held = self.held, []
        feed = self._events.feed_into
        for item in items:
            if isinstance(item, Chunk):
                feed(item, out)
            else:
                if item is None:
                    out.extend(self._events.finish())
                out.append(item)
        return self._sink.take(out) if out else True


class MessagesSource:
    """The stream's source for a Messages API stream: ``source``'s chunks as Anthropic events."""

    __slots__ = ("_ended", "_events", "_pending", "_source")

    def __init__(self, source: AsyncIterator[Chunk], events: MessageEvents) -> None:
        self._source = source
        self._events = events
        self._pending: deque[Chunk] = deque()
        self._ended = False

    def __aiter__(self) -> MessagesSource:
        return self

    @property
    def more(self) -> bool:
        return bool(self._pending) or bool(getattr(self._source, "more", False))

    async def __anext__(self) -> Chunk:
        pending = self._pending
        while not pending:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._ended = True
                pending.extend(self._events.finish())
                break
            out: list[Chunk] = []
            self._events.feed_into(chunk, out)
            pending.extend(out)
        return pending.popleft()

    def push(self, sink: PushSink) -> bool:
        push = getattr(self._source, "push", None)
        if push is None:
            return False
        translating = _TranslatingSink(self._events, sink, list(self._pending))
        if not push(translating):
            return False  # not pushed: the held events are pulled as before
        self._pending.clear()
        if translating.held:
            # Nothing came with the push itself: the events already translated go out now, before
            # anything the provider's connection hands on later.
            translating.take([])
        return True

    def resume(self) -> None:
        resume = getattr(self._source, "resume", None)
        if resume is not None:
            resume()

    async def aclose(self) -> None:
        await close_quietly(self._source)
