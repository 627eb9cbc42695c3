"""Shared services, built when the app starts and closed when it stops; handlers get them injected."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar

from app.cache.backends import build_backend
from app.cache.chat_cache import ChatCache
from app.catalogue.catalogue import Catalogue, Snapshot, build_snapshot
from app.catalogue.prices import CataloguePrices
from app.config.settings import Settings
from app.core.drain import Drain
from app.core.service import ChatService
from app.embeddings.service import EmbeddingService, embedding_models
from app.limits.build import build_limiter
from app.limits.limiter import Limiter
from app.observability.metrics import Metrics
from app.observability.tracing import Tracing
from app.providers.balancer import Balancer
from app.providers.base import Provider
from app.providers.quoting import ProviderText
from app.providers.resilient import Resilient
from app.redis.breakers import RedisBreakers
from app.resume.memory import MemoryResumeStore, auto_budget_mb
from app.resume.service import Resumes, SharedStore


@dataclass
class Services:
    settings: Settings
    provider: Provider
    catalogue: Catalogue
    chat: ChatService
    embeddings: EmbeddingService | None = None
    cache: ChatCache | None = None
    #: Deployment groups' live state (selection, cooldowns); readiness reports who rests.
    balancer: Balancer | None = None
    limiter: Limiter | None = None
    resumes: Resumes | None = None
    #: Readiness checks beyond "configuration loaded": name -> async check returning True when healthy.
    ready_checks: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)
    closers: list[Callable[[], Any]] = field(default_factory=list)


def build_services(
    settings: Settings,
    metrics: Metrics | None = None,
    environ: Mapping[str, str] | None = None,
    drain: Drain | None = None,
    quote: ProviderText | None = None,
) -> Services:
    # Imported here so that importing the app (and --help, and config errors) never pays for LiteLLM.
    from app.embeddings.upstream import EmbeddingsUpstream
    from app.providers.anthropic_relay import AnthropicRelay
    from app.providers.anthropic_target import is_anthropic, resolve_anthropic_target
    from app.providers.content_urls import OPENAI_WIRE as OPENAI_WIRE_URLS
    from app.providers.content_urls import policy_for
    from app.providers.demo import DemoProvider, is_demo
    from app.providers.egress import EgressSettings
    from app.providers.litellm_metadata import ShippedMetadata
    from app.providers.relay import Relay
    from app.providers.relay_target import resolve_target
    from app.providers.routing import RoutingProvider

    environ = os.environ if environ is None else environ
    quote = quote or provider_text(settings, environ)
    targets = {d.id: t for d in settings.models.deployments if (t := resolve_target(d, environ)) is not None}
    egress = EgressSettings.from_environ(environ)
    relay = Relay(targets, quote=quote, egress=egress)
    relay.open_pools()  # one connection pool per upstream origin, before the first request
    # Anthropic deployments take the relay for Messages API requests (in Anthropic's own API), and
    # LiteLLM for chat completions requests (which need its OpenAI -> Anthropic translation).
    native = {d.id: t for d in settings.models.deployments if (t := resolve_anthropic_target(d, environ)) is not None}
    anthropic = AnthropicRelay(native, quote=quote, egress=egress) if native else None
    if anthropic is not None:
        anthropic.open_pools()
    demo = DemoProvider({d.id: d.litellm_model for d in settings.models.deployments if is_demo(d.litellm_model)})
    full = None
    if any(d.id not in targets and not demo.serves(d.id) for d in settings.models.deployments):
        # LiteLLM is imported only when a deployment needs its full path.
        from app.providers.litellm_provider import LiteLLMProvider, build_router

        full = LiteLLMProvider(build_router(settings, environ), quote)
    # Which content URLs each deployment's provider is given: the relay's are OpenAI-wire by
    # definition (no LiteLLM needed); the others' are read from LiteLLM's config for them.
    url_policies = {
        d.id: OPENAI_WIRE_URLS if d.id in targets else policy_for(d.litellm_model, d.api_base)
        for d in settings.models.deployments
        if not demo.serves(d.id)  # the demo models take no URLs
    }
    anthropic_ids = frozenset(d.id for d in settings.models.deployments if is_anthropic(d.litellm_model))
    provider = RoutingProvider(relay, full, url_policies, demo=demo, anthropic=anthropic, anthropic_ids=anthropic_ids)
    shipped = ShippedMetadata(d.litellm_model for d in settings.models.deployments)

    async def build() -> Snapshot:
        return build_snapshot(settings.models.deployments, shipped.metadata, shipped.provider_of)

    catalogue = Catalogue(build, settings.models.refresh_s)

    def model_names() -> frozenset[str]:
        snapshot = catalogue.current()
        return snapshot.names if snapshot is not None else frozenset()

    cache = None
    ready_checks: dict[str, Callable[[], Awaitable[bool]]] = {}
    # One circuit breaker per Redis server for every feature on it; closed last (closers run reversed).
    breakers = RedisBreakers()
    closers: list[Callable[[], Any]] = [breakers.aclose, provider.aclose]
    if settings.cache.enabled:
        cache = ChatCache(
            build_backend(settings.cache, breakers),
            settings.cache,
            on_result=metrics.cache_result if metrics else None,
        )
        closers.append(cache.close)
        if settings.cache.backend == "redis":
            ready_checks["cache"] = cache.health

    resumes = build_resumes(settings, metrics, breakers)
    closers.append(resumes.close)
    if resumes.shared is not None:
        ready_checks["resume_store"] = resumes.shared.health
    limiter = build_limiter(settings, prices=CataloguePrices(catalogue), observer=metrics, breakers=breakers)
    closers.append(limiter.close)
    if settings.rate_limit.backend == "redis":
        ready_checks["rate_limit"] = limiter.health
    balancer = Balancer(settings.models)
    resilient = Resilient(balancer, provider, observer=metrics)
    tracing = None
    if settings.tracing.enabled:
        tracing = Tracing(settings.tracing)
        closers.append(lambda: asyncio.to_thread(tracing.shutdown))  # its flush waits on the network
    embedding_names = embedding_models(catalogue)
    embeddings_upstream = EmbeddingsUpstream(settings.models.deployments, environ, quote, egress)
    closers.append(embeddings_upstream.aclose)
    embeddings = EmbeddingService(
        settings,
        resilient,
        embeddings_upstream,
        embedding_names=embedding_names,
        model_names=model_names,
        cache=cache,
        limiter=limiter,
        observer=metrics,
        drain=drain,
        tracing=tracing,
    )
    chat = ChatService(
        settings,
        resilient,
        embedding_names=embedding_names,
        model_names=model_names,
        observer=metrics,
        cache=cache,
        drain=drain,
        tracing=tracing,
        limiter=limiter,
        resumes=resumes,
    )
    return Services(
        settings=settings,
        provider=provider,
        catalogue=catalogue,
        chat=chat,
        embeddings=embeddings,
        cache=cache,
        balancer=balancer,
        limiter=limiter,
        resumes=resumes,
        ready_checks=ready_checks,
        closers=closers,
    )


def build_resumes(settings: Settings, metrics: Metrics | None, breakers: RedisBreakers | None = None) -> Resumes:
    """Stream logs in memory always (the live readers' source); in Redis too when that is the store."""
    s = settings.streaming
    budget_mb = s.resume_memory_mb or auto_budget_mb()
    # With Redis as the store, ended logs are read from Redis: memory holds the live streams' logs only.
    local = MemoryResumeStore(
        s.resume_ttl_s, s.resume_max_events, budget_mb * 1024 * 1024, keep_ended=s.resume_store != "redis"
    )
    shared: SharedStore | None = None
    if s.resume_store == "redis" and s.resume_max_events > 0:
        from app.resume.redis_store import OP_TIMEOUT_S, RedisResumeStore

        breaker = breakers.user(settings.redis.url, "resume_store", OP_TIMEOUT_S) if breakers else None
        shared = RedisResumeStore(settings.redis.url, s, on_stop=lambda sid: _stop_local(local, sid), breaker=breaker)
    if metrics is not None:
        metrics.resume_memory = lambda: local.bytes
    return Resumes(s, local, shared, on_result=metrics.resume_result if metrics else None)


def _stop_local(local: MemoryResumeStore, stream_id: str) -> None:
    """Another replica was asked to stop a stream that runs here."""
    log = local.get(stream_id)
    if log is not None and log.stream is not None:
        log.stream.stop()


def provider_text(settings: Settings, environ: Mapping[str, str]) -> ProviderText:
    """The one redactor of provider and library text, for every configured secret."""
    return ProviderText(configured_secrets(settings, environ), production=settings.production)


def configured_secrets(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Every credential the configuration points at: provider keys and gateway keys, to redact."""
    names = [d.api_key_env for d in settings.models.deployments if d.api_key_env]
    secrets = [environ.get(name, "") for name in names]
    if settings.server.api_keys_env:
        secrets += [k.strip() for k in environ.get(settings.server.api_keys_env, "").split(",")]
    secrets += [environ.get(k.key_env, "").strip() for k in settings.keys if k.key_env]
    return [s for s in secrets if s]


def settle_heap() -> None:
    """Move everything start-up allocated out of the cyclic garbage collector's sight.

    LiteLLM's import leaves some 430,000 long-lived objects (its model map, pydantic
    models, provider tables). Without this, every full collection walks all of them: a pause of a
    few hundred milliseconds in the middle of live streams, measured as TTFB p95 jumping from ~70 ms
    to ~300 ms on a plain relay that merely imported LiteLLM. Frozen objects are still freed by
    reference counting; only cycles among them would never be collected, and start-up state lives
    as long as the process anyway. No collection first: the import's automatic collections leave
    nothing to find (measured: 0 unreachable objects) and a full pass costs 0.2 s of start-up.
    """
    gc.freeze()
    # A young collection walks every young object still alive, and with hundreds of streams in flight
    # that is every stream's state, milliseconds each time: its cost is per collection more than per
    # allocation, so collections are kept rare. Only garbage in reference cycles waits for one, and
    # 50,000 allocations bound it (the figures: loadtests/README.md).
    gc.set_threshold(50_000, 10, 10)


def services_lifespan(
    settings: Settings,
    metrics: Metrics,
    environ: Mapping[str, str] | None = None,
    drain: Drain | None = None,
    quote: ProviderText | None = None,
) -> Callable[[Litestar], Any]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = build_services(settings, metrics, environ, drain, quote)
        await services.catalogue.get()
        app.state.services = services
        app.state.chat = services.chat
        app.state.embeddings = services.embeddings
        app.state.catalogue = services.catalogue
        app.state.resumes = services.resumes
        app.state.ready_checks = services.ready_checks
        settle_heap()
        if drain is not None:
            drain.install_signal_handlers()  # after uvicorn's own: the first signal drains
        try:
            yield
        finally:
            for close in reversed(services.closers):
                result = close()
                if hasattr(result, "__await__"):
                    await result

    return lifespan
