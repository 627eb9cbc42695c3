"""Who is told about a stream's milestones (metrics, the trace span): never per chunk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.core.stream import ChatStream


class StreamObserver(Protocol):
    """Told about each stream's milestones (metrics); never per chunk."""

    def stream_opened(self, stream: ChatStream) -> None: ...
    def stream_first_byte(self, stream: ChatStream) -> None: ...
    def stream_first_token(self, stream: ChatStream) -> None: ...
    def stream_closed(self, stream: ChatStream) -> None: ...


class FanOut:
    """Several stream observers as one (metrics and the trace span)."""

    __slots__ = ("_observers",)

    def __init__(self, observers: list[StreamObserver]) -> None:
        self._observers = observers

    def stream_opened(self, stream: ChatStream) -> None:
        for observer in self._observers:
            observer.stream_opened(stream)

    def stream_first_byte(self, stream: ChatStream) -> None:
        for observer in self._observers:
            observer.stream_first_byte(stream)

    def stream_first_token(self, stream: ChatStream) -> None:
        for observer in self._observers:
            observer.stream_first_token(stream)

    def stream_closed(self, stream: ChatStream) -> None:
        for observer in self._observers:
            observer.stream_closed(stream)
