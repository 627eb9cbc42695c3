"""Chat use cases, free of HTTP and WebSocket: resolve the model, open a stream, complete a call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from app.chat.stream import CLIENT_DISCONNECTED, COMPLETED, UPSTREAM_ERROR, ChatStream, Deadlines, StreamObserver
from app.errors import GatewayError, ModelNotFound, UpstreamTimeout
from app.protocol.openai import ChatCompletionInput
from app.providers.base import Completion, Provider, Usage
from app.settings import Settings


class CallObserver(StreamObserver, Protocol):
    def json_call(
        self,
        model: str,
        *,
        started_at: float,
        upstream_started_at: float,
        ended_at: float,
        outcome: str,
        usage: Usage | None,
        error: GatewayError | None,
        responded: bool,
    ) -> None: ...


class ChatService:
    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        *,
        model_names: Callable[[], frozenset[str]] | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        names = frozenset(d.name for d in settings.models.deployments)
        self._model_names = model_names or (lambda: names)
        self._timeouts = {d.name: d.timeout_s for d in settings.models.deployments}
        self._observer = observer
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
            observer=self._observer,
            include_usage=request.include_usage(),
        )
        return stream.start()

    async def complete(self, request: ChatCompletionInput, *, started_at: float | None = None) -> Completion:
        """One whole completion under the deployment's deadline; metrics record it as a JSON call."""
        deployment = self.resolve(request.model)
        started = time.perf_counter() if started_at is None else started_at
        upstream_started = time.perf_counter()
        outcome: str = CLIENT_DISCONNECTED
        error: GatewayError | None = None
        completion: Completion | None = None
        try:
            async with asyncio.timeout(self._timeouts.get(deployment, 600.0)):
                completion = await self._provider.complete(request, deployment)
            outcome = COMPLETED
            return completion
        except TimeoutError as exc:
            error = UpstreamTimeout("The provider did not complete the call in time.")
            outcome = error.outcome
            raise error from exc
        except GatewayError as exc:
            error, outcome = exc, exc.outcome
            raise
        except Exception:
            outcome = UPSTREAM_ERROR
            raise
        finally:
            if self._observer is not None:
                self._observer.json_call(
                    deployment,
                    started_at=started,
                    upstream_started_at=upstream_started,
                    ended_at=time.perf_counter(),
                    outcome=outcome,
                    usage=completion.usage if completion is not None else None,
                    error=error,
                    responded=outcome != CLIENT_DISCONNECTED,
                )
