"""Chat use cases, free of HTTP and WebSocket: resolve the model, consult the cache, open a stream,
complete a call."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol

import msgspec
import structlog
from opentelemetry.trace import Span

from app.access.keys import ANONYMOUS, Caller
from app.cache.answer import replay_chunks
from app.cache.chat_cache import NO_CACHE, CacheDecision, ChatCache, cache_key
from app.config.settings import DeploymentSettings, Settings
from app.core.drain import Drain
from app.core.observers import FanOut, StreamObserver
from app.core.stream import ChatStream
from app.domain.chat_request import ChatCompletionInput, one_message_input
from app.domain.chunks import Chunk, Completion, Usage
from app.domain.errors import GatewayError, ModelNotAllowed, ModelNotFound, ModelNotSupported
from app.domain.events import CLIENT_DISCONNECTED, COMPLETED, NO_GUARD, UPSTREAM_ERROR, Deadlines
from app.domain.ids import random_hex
from app.limits.limiter import Admission, Limiter
from app.observability.tracing import StreamTracer, Tracing
from app.providers.resilient import Resilient, Trail
from app.resume.service import Resumes


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


def _each(callbacks: list[Callable[[ChatStream], None]]) -> Callable[[ChatStream], None]:
    def call(stream: ChatStream) -> None:
        for callback in callbacks:
            callback(stream)

    return call


def _settle_stream(admission: Admission, stream: ChatStream) -> None:
    """A stream's charge: the provider's usage, else an estimate when a provider was reached and
    may bill (output arrived, or the call ended by a leaving client, a cancel, a deadline or a
    drain rather than by a provider's refusal)."""
    trail = stream.trail
    reached = trail is not None and trail.attempts > 0
    may_bill = reached and (stream.output_tokens > 0 or stream.outcome != UPSTREAM_ERROR)
    admission.settle(
        stream.model,
        stream.usage,
        from_cache=stream.cache_status == "HIT",
        answered_by=trail.deployment if trail is not None else None,
        output_tokens=stream.output_tokens if may_bill else None,
    )


def _completion_tokens(completion: Completion) -> int:
    """Output tokens of a whole answer that came without usage, erring high (its bytes / 4)."""
    return len(completion.raw) // 4 + 1


async def _replay(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


class ChatService:
    def __init__(
        self,
        settings: Settings,
        provider: Resilient,
        *,
        model_names: Callable[[], frozenset[str]] | None = None,
        observer: CallObserver | None = None,
        cache: ChatCache | None = None,
        drain: Drain | None = None,
        tracing: Tracing | None = None,
        limiter: Limiter | None = None,
        resumes: Resumes | None = None,
        embedding_names: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        self._settings = settings
        #: Models that only serve embeddings: a chat call for one is a 400 model_not_supported.
        self._embedding_names = embedding_names
        self._limiter = limiter
        self._resumes = resumes
        self._provider = provider
        names = frozenset(d.name for d in settings.models.deployments)
        self._model_names = model_names or (lambda: names)
        # Per public name, its group's first deployment: what the cache keys on and whose timeout
        # bounds a cache wait (a group's members serve one model).
        self._deployments: dict[str, DeploymentSettings] = {}
        for dep in settings.models.deployments:
            self._deployments.setdefault(dep.name, dep)
        self._observer = observer
        self._cache = cache
        self._drain = drain
        self._tracing = tracing
        # Stream milestones go to the metrics and, with tracing on, to the request's span.
        self._stream_observer: StreamObserver | None = (
            FanOut([o for o in (observer, StreamTracer()) if o is not None]) if tracing is not None else observer
        )
        s = settings.streaming
        self._deadlines = Deadlines(s.first_token_timeout_s, s.idle_timeout_s, s.heartbeat_s)

    def resolve(self, model: str) -> str:
        """A public model name, checked; anything unlisted is a 404. Which deployment of its group
        serves a call is decided per attempt (``providers/resilient.py``)."""
        if model not in self._model_names() or model not in self._deployments:
            raise ModelNotFound(f"The model `{model}` does not exist or is not served by this gateway.", param="model")
        if self._embedding_names is not None and model in self._embedding_names():
            raise ModelNotSupported(f"The model `{model}` is an embedding model: use /v1/embeddings.", param="model")
        return model

    @asynccontextmanager
    async def unbilled(self, model: str, caller: Caller) -> AsyncIterator[Admission | None]:
        """A request that asks nothing of a provider (a prepared Responses turn, a token count): the
        model known (404) and allowed for the key (403), counted against its requests a minute and in
        flight while it runs (429) as a request of an empty message, then settled: nothing charged,
        and no input of its own counted against its tokens a minute."""
        admission = await self.admit(one_message_input(model, ""), caller)
        try:
            yield admission
        finally:
            if admission is not None:
                admission.settle(model, None)

    async def admit(self, request: ChatCompletionInput, caller: Caller) -> Admission | None:
        """Whether ``caller`` may make this request now: model known (404), allowed for the key (403),
        within its limits and budget (429). The admission is settled when the request ends."""
        model = self.resolve(request.model)
        allows = caller.policy.allows
        if not allows(model):
            raise ModelNotAllowed(f"This key may not use the model `{model}`.", param="model")
        if self._limiter is None:
            return None
        return await self._limiter.admit(caller, request, reach=self._provider.fallbacks(model, allows))

    async def admit_resume(self, caller: Caller) -> Admission | None:
        """A resume's reader counts against the key's concurrent-stream limit like a stream (429)."""
        return await self._limiter.lease(caller) if self._limiter is not None else None

    async def open_admitted(
        self,
        request: ChatCompletionInput,
        caller: Caller,
        transport: str,
        *,
        started_at: float | None = None,
        cache_control: str | None = None,
        traceparent: str | None = None,
        admitted: Callable[[Admission | None], None] | None = None,
        guard: AbstractContextManager[Any] = NO_GUARD,
    ) -> ChatStream:
        """The one way a transport starts a chat stream: admit ``caller``'s request (404 / 403 / 429
        raised), tell ``admitted`` (the HTTP route keeps the rate-limit headers for its answer, error
        or not), then open the stream inside ``guard`` (the request's disconnect watch). Whatever
        goes wrong on the way, the admission is settled once: by ``open_stream``, or by the stream."""
        admission = await self.admit(request, caller)
        if admitted is not None:
            admitted(admission)
        stream: ChatStream | None = None
        opening = False
        try:
            with guard:
                opening = True
                stream = await self.open_stream(
                    request,
                    transport,
                    started_at=started_at,
                    caller=caller,
                    cache_control=cache_control,
                    traceparent=traceparent,
                    admission=admission,
                )
        except BaseException:
            if stream is not None:
                stream.close(CLIENT_DISCONNECTED)  # its close settles the admission
            elif not opening and admission is not None:
                admission.settle(request.model, None)  # the client had left before the stream opened
            raise
        return stream

    async def _consult_cache(
        self, request: ChatCompletionInput, deployment: str, caller: Caller, cache_control: str | None, wait_s: float
    ) -> CacheDecision:
        if self._cache is None:
            return NO_CACHE
        body = request.body
        if request.anthropic is not None:
            # Sent in Anthropic's own API: its every field may change the answer, not only those the
            # chat body carries (Anthropic-only controls the translation does not name).
            body = {**body, "\x00anthropic": request.anthropic.body}
        key = cache_key(body, self._deployments[deployment], caller.scope)
        return await self._cache.consult(key, cache_control, wait_s)

    async def open_stream(
        self,
        request: ChatCompletionInput,
        transport: str,
        *,
        started_at: float | None = None,
        caller: Caller = ANONYMOUS,
        cache_control: str | None = None,
        traceparent: str | None = None,
        trail: Trail | None = None,
        admission: Admission | None = None,
        adapt: Callable[[AsyncIterator[Chunk]], AsyncIterator[Chunk]] | None = None,
        format: str = "chat",
    ) -> ChatStream:
        """A started stream. ``adapt`` wraps its chunks (after the cache, which keeps chat chunks) for
        another API's events, and ``format`` names that API's framing for its resumes."""
        try:
            deployment = self.resolve(request.model)
            wait_s = min(self._deployments[deployment].timeout_s, self._deadlines.first_chunk_s)
            decision = await self._consult_cache(request, deployment, caller, cache_control, wait_s)
        except BaseException:
            if admission is not None:
                admission.settle(request.model, None)  # no stream to hold the lease
            raise
        span, request = self._trace(request, deployment, transport, traceparent, started_at)
        source: AsyncIterator[Chunk]
        trail = trail or Trail()
        trail.allows = caller.policy.allows
        if decision.answer is not None:
            source = _replay(replay_chunks(decision.answer))
        else:
            # From here the stream owns the flight this request may lead: closing it, on any path, lands it.
            source = decision.record(self._provider.stream(request, deployment, trail))
        if adapt is not None:
            source = adapt(source)
        stream = ChatStream(
            stream_id=random_hex(16),
            model=deployment,
            transport=transport,
            source=source,
            deadlines=self._deadlines,
            started_at=started_at,
            observer=self._stream_observer,
            include_usage=request.include_usage(),
            trail=trail,
        )
        stream.span = span
        stream.cache_status = decision.status
        if self._resumes is not None:
            self._resumes.begin(stream, caller.scope, format)  # before start: the first event is logged too
        closing: list[Callable[[ChatStream], None]] = []
        if admission is not None:
            closing.append(lambda s: _settle_stream(admission, s))
        if self._drain is not None:
            closing.append(self._drain.stream_closed)
            self._drain.track_stream(stream)
        if closing:
            stream.on_close = closing[0] if len(closing) == 1 else _each(closing)
        return stream.start()

    async def complete(
        self,
        request: ChatCompletionInput,
        *,
        started_at: float | None = None,
        caller: Caller = ANONYMOUS,
        cache_control: str | None = None,
        traceparent: str | None = None,
        trail: Trail | None = None,
        admission: Admission | None = None,
    ) -> tuple[Completion, str | None]:
        """One whole completion under the deployment's deadline, and its X-Cache status."""
        try:
            deployment = self.resolve(request.model)
            started = time.perf_counter() if started_at is None else started_at
            wait_s = self._deployments[deployment].timeout_s
            decision = await self._consult_cache(request, deployment, caller, cache_control, wait_s)
        except BaseException:
            if admission is not None:
                admission.settle(request.model, None)
            raise
        span, request = self._trace(request, deployment, "json", traceparent, started)
        result: tuple[Completion, str | None] | None = None
        trail = trail or Trail()
        trail.allows = caller.policy.allows
        try:
            result = await self._complete(request, deployment, decision, started, trail, admission)
            return result
        finally:
            if span is not None:
                error = sys.exc_info()[1]
                Tracing.end(
                    span,
                    outcome="completed" if error is None else getattr(error, "outcome", UPSTREAM_ERROR),
                    usage=result[0].usage if result is not None else None,
                    finish_reason=None,
                    error=error if isinstance(error, GatewayError) else None,
                )

    def _trace(
        self,
        request: ChatCompletionInput,
        deployment: str,
        transport: str,
        traceparent: str | None,
        started_at: float | None,
    ) -> tuple[Span | None, ChatCompletionInput]:
        """The request's span (tracing on), and the request carrying its context for the provider."""
        if self._tracing is None:
            return None, request
        span = self._tracing.start(
            request.model,
            self._deployments[deployment].litellm_model,
            transport,
            traceparent,
            time.perf_counter() if started_at is None else started_at,
        )
        structlog.contextvars.bind_contextvars(trace_id=Tracing.trace_id(span))  # the request's log line
        # The request's own provider headers (an Anthropic deployment's anthropic-beta) stay.
        headers = {**(request.trace_headers or {}), **Tracing.headers(span)}
        return span, msgspec.structs.replace(request, trace_headers=headers)

    async def _complete(
        self,
        request: ChatCompletionInput,
        deployment: str,
        decision: CacheDecision,
        started: float,
        trail: Trail,
        admission: Admission | None,
    ) -> tuple[Completion, str | None]:
        if decision.answer is not None:
            completion = Completion(raw=decision.answer.completion, usage=decision.answer.usage)
            self._record_call(deployment, started, started, COMPLETED, completion.usage, None, from_cache=True)
            if admission is not None:
                admission.settle(deployment, completion.usage, from_cache=True)
            return completion, decision.status
        upstream_started = time.perf_counter()
        outcome: str = CLIENT_DISCONNECTED
        error: GatewayError | None = None
        completion_or_none: Completion | None = None
        try:
            with self._drain.call() if self._drain is not None else nullcontext():
                try:
                    # Each attempt runs under its deployment's timeout_s (a timeout is retried like a 5xx).
                    completion_or_none = await self._provider.complete(request, deployment, trail)
                except asyncio.CancelledError:
                    if self._drain is None or not self._drain.ending:
                        raise
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    raise self._drain.refusal() from None  # drain time is up: answered with a 503
            outcome = COMPLETED
            return completion_or_none, decision.status
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
            if admission is not None:
                # Without usage: an answer is charged from its size; a call the client left (or a
                # drain ended) from its input; a provider's refusal is not charged.
                if completion_or_none is not None:
                    output: int | None = _completion_tokens(completion_or_none)
                else:
                    output = 0 if outcome != UPSTREAM_ERROR and trail.attempts else None
                admission.settle(deployment, usage, answered_by=trail.deployment, output_tokens=output)

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
