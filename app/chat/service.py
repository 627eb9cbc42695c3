"""Chat use cases, free of HTTP and WebSocket: resolve the model, consult the cache, open a stream,
complete a call."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import msgspec

from app.access.keys import ANONYMOUS, Caller
from app.cache.answer import CachedAnswer, replay_chunks, split
from app.cache.chat_cache import BYPASS, ERROR, HIT, MISS, ChatCache, cache_key, policy_from
from app.chat.stream import CLIENT_DISCONNECTED, COMPLETED, UPSTREAM_ERROR, ChatStream, Deadlines, StreamObserver
from app.errors import GatewayError, ModelNotFound, UpstreamTimeout
from app.protocol.openai import ChatCompletionInput
from app.providers.base import Chunk, Completion, Provider, Usage
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


class CacheDecision(msgspec.Struct):
    """What the cache said about one request: a stored answer, or whether to lead the upstream call."""

    status: str | None  # the X-Cache header: HIT, MISS, BYPASS; None when caching is off
    answer: CachedAnswer | None = None
    key: str = ""
    flight: asyncio.Future[CachedAnswer | None] | None = None


NO_CACHE = CacheDecision(status=None)


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
    ) -> None:
        self._settings = settings
        self._provider = provider
        names = frozenset(d.name for d in settings.models.deployments)
        self._model_names = model_names or (lambda: names)
        self._deployments = {d.name: d for d in settings.models.deployments}
        self._observer = observer
        self._cache = cache
        s = settings.streaming
        self._deadlines = Deadlines(s.first_token_timeout_s, s.idle_timeout_s, s.heartbeat_s)

    def resolve(self, model: str) -> str:
        """A public model name -> the deployment that serves it; anything unlisted is a 404."""
        if model not in self._model_names() or model not in self._deployments:
            raise ModelNotFound(f"The model `{model}` does not exist or is not served by this gateway.", param="model")
        return model

    async def _consult_cache(
        self,
        request: ChatCompletionInput,
        deployment: str,
        caller: Caller,
        cache_control: str | None,
        *,
        wait_s: float,
    ) -> CacheDecision:
        cache = self._cache
        if cache is None:
            return NO_CACHE
        policy = policy_from(cache_control)
        key = cache_key(request.body, self._deployments[deployment], caller.scope)
        if not policy.read:
            cache.count(BYPASS)
            return CacheDecision(status="BYPASS", key=key, flight=cache.lead(key) if policy.write else None)
        answer, ok = await cache.lookup(key)
        if answer is None and (flight := cache.flight(key)) is not None:
            # Someone on this replica is already asking the provider: wait for their answer, but no
            # longer than this request would wait for the provider itself.
            answer = await cache.follow(flight, wait_s)
        if answer is not None:
            cache.count(HIT)
            return CacheDecision(status="HIT", answer=answer, key=key)
        cache.count(MISS if ok else ERROR)
        status = "MISS" if policy.write else "BYPASS"
        return CacheDecision(status=status, key=key, flight=cache.lead(key) if policy.write else None)

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
        decision = await self._consult_cache(request, deployment, caller, cache_control, wait_s=wait_s)
        source: AsyncIterator[Chunk]
        if decision.answer is not None:
            source = _replay(replay_chunks(decision.answer))
        else:
            source = self._provider.stream(request, deployment)
            if decision.flight is not None and self._cache is not None:
                # From here the stream owns the flight: closing the stream, on any path, lands it.
                source = self._cache.recording(decision.key, decision.flight, source)
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
        decision = await self._consult_cache(request, deployment, caller, cache_control, wait_s=wait_s)
        if decision.answer is not None:
            completion = Completion(raw=decision.answer.completion, usage=decision.answer.usage)
            self._record_call(deployment, started, started, COMPLETED, completion.usage, None, from_cache=True)
            return completion, decision.status
        upstream_started = time.perf_counter()
        outcome: str = CLIENT_DISCONNECTED
        error: GatewayError | None = None
        completion_or_none: Completion | None = None
        try:
            async with asyncio.timeout(self._deployments[deployment].timeout_s):
                completion_or_none = await self._provider.complete(request, deployment)
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
            if decision.flight is not None and self._cache is not None:
                answer = None
                if completion_or_none is not None:
                    usage = completion_or_none.usage
                    answer = CachedAnswer(
                        completion=completion_or_none.raw,
                        chunks=split(completion_or_none.raw),
                        prompt_tokens=usage.prompt_tokens if usage else None,
                        completion_tokens=usage.completion_tokens if usage else None,
                    )
                self._cache.land(decision.key, decision.flight, answer)
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
