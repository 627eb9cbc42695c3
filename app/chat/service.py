"""Chat use cases, free of HTTP and WebSocket: resolve the model, open a stream, complete a call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from app.chat.stream import ChatStream, Deadlines
from app.errors import ModelNotFound, UpstreamTimeout
from app.protocol.openai import ChatCompletionInput
from app.providers.base import Completion, Provider
from app.settings import Settings

StreamListener = Callable[[ChatStream], None]
CompletionListener = Callable[[str, str, float, str, Completion | None], None]


class ChatService:
    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        *,
        model_names: Callable[[], frozenset[str]] | None = None,
        on_stream_closed: list[StreamListener] | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        names = frozenset(d.name for d in settings.models.deployments)
        self._model_names = model_names or (lambda: names)
        self._timeouts = {d.name: d.timeout_s for d in settings.models.deployments}
        self._on_stream_closed = on_stream_closed or []
        s = settings.streaming
        self._deadlines = Deadlines(s.first_token_timeout_s, s.idle_timeout_s, s.heartbeat_s)

    def resolve(self, model: str) -> str:
        """A public model name -> the deployment that serves it; anything unlisted is a 404."""
        if model not in self._model_names():
            raise ModelNotFound(f"The model `{model}` does not exist or is not served by this gateway.", param="model")
        return model

    def open_stream(
        self, request: ChatCompletionInput, transport: str, *, started_at: float | None = None
    ) -> ChatStream:
        deployment = self.resolve(request.model)
        stream = ChatStream(
            stream_id=uuid.uuid4().hex,
            model=deployment,
            transport=transport,
            source=self._provider.stream(request, deployment),
            deadlines=self._deadlines,
            queue_size=self._settings.streaming.queue_chunks,
            started_at=started_at,
            on_close=self._stream_closed,
        )
        return stream.start()

    def _stream_closed(self, stream: ChatStream) -> None:
        for listener in self._on_stream_closed:
            listener(stream)

    async def complete(self, request: ChatCompletionInput) -> Completion:
        deployment = self.resolve(request.model)
        try:
            async with asyncio.timeout(self._timeouts.get(deployment, 600.0)):
                return await self._provider.complete(request, deployment)
        except TimeoutError as exc:
            raise UpstreamTimeout("The provider did not complete the call in time.") from exc


def now() -> float:
    return time.perf_counter()
