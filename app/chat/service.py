"""Chat use cases, free of HTTP and WebSocket: resolve the model, consult the cache, open a stream,
complete a call."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from typing import Protocol

from app.access.keys import ANONYMOUS, Caller
from app.cache.answer import replay_chunks
from app.cache.chat_cache import NO_CACHE, CacheDecision, ChatCache, cache_key
from app.chat.stream import CLIENT_DISCONNECTED, COMPLETED, UPSTREAM_ERROR, ChatStream, Deadlines, StreamObserver
from app.drain import Drain
from app.errors import GatewayError, ModelNotFound, UpstreamTimeout
from app.protocol.openai import ChatCompletionInput
from app.providers.base import Chunk, Completion, Provider, Usage
from app.resume.service import Resumes
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


async def _replay(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


class ChatService:
    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        *,
        model_names: Callable[[], frozenset[str]] | None = None,
        observer: CallObserver | None = None,
        cache: ChatCache | None = None,
        drain: Drain | None = None,
        resumes: Resumes | None = None,
    ) -> None:
        self._settings = settings
        self._resumes = resumes
        self._provider = provider
        names = frozenset(d.name for d in settings.models.deployments)
        self._model_names = model_names or (lambda: names)
        self._deployments = {d.name: d for d in settings.models.deployments}
        self._observer = observer
        self._cache = cache
        self._drain = drain
        s = settings.streaming
        self._deadlines = Deadlines(s.first_token_timeout_s, s.idle_timeout_s, s.heartbeat_s)

    def resolve(self, model: str) -> str:
        """A public model name -> the deployment that serves it; anything unlisted is a 404."""
        if model not in self._model_names() or model not in self._deployments:
            raise ModelNotFound(f"The model `{model}` does not exist or is not served by this gateway.", param="model")
        return model

    async def _consult_cache(
        self, request: ChatCompletionInput, deployment: str, caller: Caller, cache_control: str | None, wait_s: float
    ) -> CacheDecision:
        if self._cache is None:
            return NO_CACHE
        key = cache_key(request.body, self._deployments[deployment], caller.scope)
        return await self._cache.consult(key, cache_control, wait_s)

    async def open_stream(
        self,
        request: ChatCompletionInput,
        transport: str,
        *,
        started_at: float | None = None,
        caller: Caller = ANONYMOUS,
        cache_control: str | None = None,
    ) -> ChatStream:
        deployment = self.resolve(request.model)
        wait_s = min(self._deployments[deployment].timeout_s, self._deadlines.first_chunk_s)
        decision = await self._consult_cache(request, deployment, caller, cache_control, wait_s)
        source: AsyncIterator[Chunk]
        if decision.answer is not None:
            source = _replay(replay_chunks(decision.answer))
        else:
            # From here the stream owns the flight this request may lead: closing it, on any path, lands it.
            source = decision.record(self._provider.stream(request, deployment))
        stream = ChatStream(
            stream_id=os.urandom(16).hex(),
            model=deployment,
            transport=transport,
            source=source,
            deadlines=self._deadlines,
            started_at=started_at,
            observer=self._observer,
            include_usage=request.include_usage(),
        )
        stream.cache_status = decision.status
        if self._resumes is not None:
            self._resumes.begin(stream, caller.scope)  # before start: the first event is logged too
        if self._drain is not None:
            stream.on_close = self._drain.stream_closed
            self._drain.track_stream(stream)
        return stream.start()

    async def complete(
        self,
        request: ChatCompletionInput,
        *,
        started_at: float | None = None,
        caller: Caller = ANONYMOUS,
        cache_control: str | None = None,
    ) -> tuple[Completion, str | None]:
        """One whole completion under the deployment's deadline, and its X-Cache status."""
        deployment = self.resolve(request.model)
        started = time.perf_counter() if started_at is None else started_at
        wait_s = self._deployments[deployment].timeout_s
        decision = await self._consult_cache(request, deployment, caller, cache_control, wait_s)
        if decision.answer is not None:
            completion = Completion(raw=decision.answer.completion, usage=decision.answer.usage)
            self._record_call(deployment, started, started, COMPLETED, completion.usage, None, from_cache=True)
            return completion, decision.status
        upstream_started = time.perf_counter()
        outcome: str = CLIENT_DISCONNECTED
        error: GatewayError | None = None
        completion_or_none: Completion | None = None
        try:
            with self._drain.call() if self._drain is not None else nullcontext():
                try:
                    async with asyncio.timeout(self._deployments[deployment].timeout_s):
                        completion_or_none = await self._provider.complete(request, deployment)
                except asyncio.CancelledError:
                    if self._drain is None or not self._drain.ending:
                        raise
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    raise self._drain.refusal() from None  # drain time is up: answered with a 503
            outcome = COMPLETED
            return completion_or_none, decision.status
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
            decision.land_completion(completion_or_none)
            usage = completion_or_none.usage if completion_or_none is not None else None
            self._record_call(deployment, started, upstream_started, outcome, usage, error)

    def _record_call(
        self,
        deployment: str,
        started: float,
        upstream_started: float,
        outcome: str,
        usage: Usage | None,
        error: GatewayError | None,
        *,
        from_cache: bool = False,
    ) -> None:
        if self._observer is None:
            return
        self._observer.json_call(
            deployment,
            started_at=started,
            # A cache hit never called the provider: no time to first token to report.
            upstream_started_at=-1.0 if from_cache else upstream_started,
            ended_at=time.perf_counter(),
            outcome=outcome,
            usage=usage,
            error=error,
            responded=outcome != CLIENT_DISCONNECTED,
        )
