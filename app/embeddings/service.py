"""Embeddings use cases, free of HTTP: which models serve them, admission, the cache, and
one call through the group's retries and fallbacks.

Served by public models whose catalogue mode is ``embedding`` (a chat model here, or an embedding
model on the chat routes, is 400 ``model_not_supported``). Admission and settlement are the chat
pipeline's own (``Limiter``): the call is admitted on its estimated input tokens and charged the
provider's input tokens at the catalogue's input price. The cache keeps the provider's floats, so
one entry answers both encodings. The call runs through ``Resilient.run`` (groups, retries,
fallbacks, cooldowns, the upstream attempt metrics) under each deployment's ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Final, Protocol

import structlog

from app.access.keys import Caller
from app.api.embeddings.wire import (
    Embeddings,
    EmbeddingsRequest,
    cached_form,
    from_cached,
    input_size,
    render,
)
from app.cache.chat_cache import NO_CACHE, ChatCache, cache_key
from app.catalogue.catalogue import Catalogue
from app.config.settings import DeploymentSettings, Settings
from app.core.drain import Drain
from app.domain.chat_request import ChatCompletionInput, one_message_input
from app.domain.chunks import Completion, Usage
from app.domain.errors import GatewayError, ModelNotAllowed, ModelNotFound, ModelNotSupported, UpstreamTimeout
from app.limits.limiter import Admission, Limiter
from app.observability.tracing import Tracing
from app.providers.balancer import Member
from app.providers.resilient import Resilient, Trail

EMBEDDING_MODE: Final = "embedding"


def embedding_models(catalogue: Catalogue) -> Callable[[], frozenset[str]]:
    """The public names whose catalogue mode is ``embedding``, from the current snapshot."""

    # Asked on every chat and embeddings request: worked out once per snapshot (a refresh makes a new one).
    last: list[Any] = [None, frozenset()]

    def names() -> frozenset[str]:
        snapshot = catalogue.current()
        if snapshot is None:
            return frozenset()
        if last[0] is not snapshot:
            last[1] = frozenset(m.id for m in snapshot.models if m.mode == EMBEDDING_MODE)
            last[0] = snapshot
        found: frozenset[str] = last[1]
        return found

    return names


def _admission_request(request: EmbeddingsRequest, estimate: int) -> ChatCompletionInput:
    """The limiter counts a chat request's messages (about four bytes a token): an embeddings call
    is shown to it as one message of its estimated input size, with no output to reserve."""
    return one_message_input(request.model, "x" * (4 * estimate))


class EmbeddingsCall(Protocol):
    """Whoever makes one call to one deployment (``EmbeddingsUpstream``)."""

    async def embed(
        self, dep: DeploymentSettings, request: EmbeddingsRequest, trace: dict[str, str] | None = None
    ) -> Embeddings: ...


class EmbeddingService:
    def __init__(
        self,
        settings: Settings,
        resilient: Resilient,
        upstream: EmbeddingsCall,
        *,
        embedding_names: Callable[[], frozenset[str]],
        model_names: Callable[[], frozenset[str]],
        cache: ChatCache | None = None,
        limiter: Limiter | None = None,
        observer: Any = None,
        drain: Drain | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._drain = drain
        self._tracing = tracing
        self._settings = settings
        self._resilient = resilient
        self._upstream = upstream
        self._embedding_names = embedding_names
        self._model_names = model_names
        self._cache = cache
        self._limiter = limiter
        self._observer = observer
        self._first: dict[str, DeploymentSettings] = {}
        for dep in settings.models.deployments:
            self._first.setdefault(dep.name, dep)

    def resolve(self, model: str) -> str:
        if model not in self._model_names() or model not in self._first:
            raise ModelNotFound(f"The model `{model}` does not exist or is not served by this gateway.", param="model")
        if model not in self._embedding_names():
            raise ModelNotSupported(f"The model `{model}` is not an embedding model.", param="model")
        return model

    async def admit(self, request: EmbeddingsRequest, caller: Caller) -> Admission | None:
        model = self.resolve(request.model)
        if not caller.policy.allows(model):
            raise ModelNotAllowed(f"This key may not use the model `{model}`.", param="model")
        if self._limiter is None:
            return None
        _, estimate = input_size(request.input)
        # Priced at the dearest model the call may reach: its own and the fallbacks this key may use.
        reach = self._resilient.fallbacks(model, caller.policy.allows)
        return await self._limiter.admit(caller, _admission_request(request, estimate), reach=reach)

    async def create(
        self,
        request: EmbeddingsRequest,
        caller: Caller,
        *,
        cache_control: str | None = None,
        admission: Admission | None = None,
        trail: Trail | None = None,
        started_at: float | None = None,
        traceparent: str | None = None,
    ) -> tuple[bytes, str | None]:
        """The response body and its X-Cache status."""
        started = time.perf_counter() if started_at is None else started_at
        model = request.model
        span = None
        if self._tracing is not None:
            span = self._tracing.start(model, self._first[model].litellm_model, "json", traceparent, started)
            structlog.contextvars.bind_contextvars(trace_id=Tracing.trace_id(span))
        trail = trail or Trail()
        trail.allows = caller.policy.allows  # a fallback this key may not use is never tried
        usage: Usage | None = None
        error: GatewayError | None = None
        outcome = "client_disconnected"
        from_cache = False
        try:
            decision = NO_CACHE
            if self._cache is not None:
                material = {"\x00api": "embeddings", "input": request.input, "dimensions": request.dimensions}
                if request.extra:  # a provider's own field (``input_type``) changes the vectors
                    material["extra"] = request.extra
                key = cache_key(material, self._first[model], caller.scope)
                decision = await self._cache.consult(key, cache_control, self._first[model].timeout_s)
            if decision.answer is not None:
                embeddings = from_cached(decision.answer.completion)
                from_cache = True
            else:
                completion: Completion | None = None
                try:
                    with self._drain.call() if self._drain is not None else nullcontext():
                        try:
                            trace = Tracing.headers(span) if span is not None else None
                            embeddings = await self._call(request, model, trail, trace)
                        except asyncio.CancelledError:
                            if self._drain is None or not self._drain.ending:
                                raise
                            asyncio.current_task().uncancel()  # type: ignore[union-attr]
                            raise self._drain.refusal() from None  # drain time is up: answered with a 503
                    if decision.flight is not None:  # only a call the cache waits on needs its stored form
                        completion = Completion(raw=cached_form(embeddings), usage=Usage(embeddings.prompt_tokens, 0))
                finally:
                    decision.land_completion(completion)  # None: the call failed, followers call themselves
            # A provider that reports no usage (0) is charged from the estimate, below.
            usage = (
                Usage(prompt_tokens=embeddings.prompt_tokens, completion_tokens=0) if embeddings.prompt_tokens else None
            )
            outcome = "completed"
            return render(embeddings, model, request.encoding_format), decision.status
        except GatewayError as exc:
            error, outcome = exc, exc.outcome
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            outcome = "upstream_error"
            raise
        finally:
            if span is not None:
                Tracing.end(span, outcome=outcome, usage=usage, finish_reason=None, error=error)
            if admission is not None:
                # Without usage, a call that reached a provider is charged its estimated input (the
                # client left, a deadline, a drain, no usage sent); a provider's refusal is not.
                billed = usage is None and trail.attempts > 0 and outcome != "upstream_error" and not from_cache
                admission.settle(
                    model,
                    usage,
                    from_cache=from_cache,
                    answered_by=trail.deployment,
                    output_tokens=0 if billed else None,
                )
            if self._observer is not None:
                self._observer.json_call(
                    model,
                    started_at=started,
                    upstream_started_at=-1.0 if from_cache else started,
                    ended_at=time.perf_counter(),
                    outcome=outcome,
                    usage=usage,
                    error=error,
                    responded=outcome != "client_disconnected",
                )

    async def _call(
        self, request: EmbeddingsRequest, model: str, trail: Trail, trace: dict[str, str] | None = None
    ) -> Embeddings:
        upstream = self._upstream

        async def attempt(member: Member) -> Embeddings:
            try:
                async with asyncio.timeout(member.dep.timeout_s):
                    result: Embeddings = await upstream.embed(member.dep, request, trace)
                    return result
            except TimeoutError as exc:
                raise UpstreamTimeout("The provider did not answer the embeddings call in time.") from exc

        try:
            return await self._resilient.run(model, trail, attempt)
        finally:
            trail.release()
