"""OpenTelemetry metrics with the Prometheus exporter's reader on the app's own registry.

Instruments are created once per app (two apps in one process never share counters). Nothing is
recorded per chunk: a stream records at open, first byte, first token and close, with attribute
sets built once per stream.

Nothing goes through the SDK per observation. Counts (streams open, outcomes, chunks, tokens, cache
results) are tallied in plain dicts and handed to observable instruments when /metrics is scraped;
histograms are aggregated in place and rendered beside them (``app/observability/histograms.py``). The exported
series are the same, and a request's bookkeeping costs a few dict updates and bisects instead of an
SDK call per observation (each of which validates and hashes its attributes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from app.observability.histograms import Histogram, Histograms
from app.observability.process_metrics import register_process_metrics

if TYPE_CHECKING:
    from app.core.stream import ChatStream
    from app.domain.chunks import Usage
    from app.domain.errors import GatewayError

# Time to first byte/token: 1 ms to 30 s. Stream durations: 10 ms to 10 min.
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0)
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._reader = PrometheusMetricReader(
            registry=self.registry, disable_target_info=True, scope_info_enabled=False
        )
        # Exemplars sample trace context on every record; the gateway exports no exemplars, so the
        # filter is switched off rather than paid for on every observation.
        self._provider = MeterProvider(metric_readers=[self._reader], exemplar_filter=AlwaysOffExemplarFilter())
        meter = self._provider.get_meter("chat-gateway")
        # Histograms aggregated in place (app/observability/histograms.py), rendered with the rest at scrape time.
        self.http_duration = Histogram(
            "http_server_request_duration_seconds", "HTTP request duration by route template", HTTP_BUCKETS
        )
        self.ttfb = Histogram(
            "chat_time_to_first_byte_seconds", "Request received -> first event written", TTFB_BUCKETS
        )
        self.ttft = Histogram(
            "chat_time_to_first_token_seconds", "Upstream call started -> first content chunk", TTFB_BUCKETS
        )
        self.duration = Histogram("chat_stream_duration_seconds", "Stream duration by outcome", DURATION_BUCKETS)
        self.registry.register(Histograms(self.http_duration, self.ttfb, self.ttft, self.duration))
        # Tallies keyed by label values, in the order of the label names beside them.
        self.active: Counter[tuple[str, ...]] = Counter()
        self.outcomes: Counter[tuple[str, ...]] = Counter()
        self.chunks: Counter[tuple[str, ...]] = Counter()
        self.tokens: Counter[tuple[str, ...]] = Counter()
        self.cache_requests: Counter[tuple[str, ...]] = Counter()
        self.upstream_requests: Counter[tuple[str, ...]] = Counter()
        self.rate_limits: Counter[tuple[str, ...]] = Counter()
        self.spend: dict[tuple[str, ...], float] = {}
        self.limiter_outages: Counter[tuple[str, ...]] = Counter({(): 0})
        self.usage_estimates: Counter[tuple[str, ...]] = Counter()
        # Known label sets start at zero, so dashboards and rate() see the series before the first event.
        for result in ("hit", "miss", "bypass", "error"):
            self.cache_requests[(result,)] = 0
        for transport in ("sse", "websocket"):
            self.active[(transport,)] = 0
        meter.create_observable_up_down_counter(
            "chat.streams.active", [_observe(self.active, ("transport",))], description="Streams open now"
        )
        meter.create_observable_counter(
            "chat.stream.outcomes",
            [_observe(self.outcomes, ("transport", "model", "outcome"))],
            description="Streams ended, by outcome",
        )
        meter.create_observable_counter(
            "chat.stream.chunks",
            [_observe(self.chunks, ("transport", "model"))],
            description="Chunks relayed to clients",
        )
        meter.create_observable_counter(
            "chat.tokens", [_observe(self.tokens, ("model", "direction"))], description="Tokens from provider usage"
        )
        meter.create_observable_counter(
            "chat.cache.requests", [_observe(self.cache_requests, ("result",))], description="Cache lookups by result"
        )
        meter.create_observable_counter(
            "chat.upstream.requests",
            [_observe(self.upstream_requests, ("model", "deployment", "outcome"))],
            description="Attempts on each deployment, by outcome (ok, error, retried, fallback)",
        )
        meter.create_observable_counter(
            "chat.rate_limited",
            [_observe(self.rate_limits, ("key", "reason"))],
            description="Requests refused by a gateway key's limits or budget",
        )
        meter.create_observable_counter(
            "chat.spend.usd",
            [_observe(self.spend, ("key", "model"))],
            description="Spend in USD: usage tokens x the catalogue's prices",
        )
        meter.create_observable_counter(
            "chat.usage.estimated",
            [_observe(self.usage_estimates, ("model",))],
            description="Calls charged from an estimate because the provider's usage never came",
        )
        meter.create_observable_counter(
            "chat.rate_limit.backend.outages",
            [_observe(self.limiter_outages, ())],
            description="Times the rate limiter's backend became unreachable",
        )
        self.resumes: Counter[tuple[str, ...]] = Counter()
        for result in ("replayed", "not_found", "invalid", "unavailable"):
            self.resumes[(result,)] = 0
        meter.create_observable_counter(
            "chat.resumes", [_observe(self.resumes, ("result",))], description="Stream resumes by result"
        )
        #: Bytes held by the memory resume store: set by the lifespan once the store exists.
        self.resume_memory: Callable[[], int] = lambda: 0
        meter.create_observable_gauge(
            "chat.resume.memory",
            [lambda _options: [Observation(self.resume_memory())]],
            unit="By",
            description="Bytes of stream logs held in this process's memory (bounded by streaming.resume_memory_mb)",
        )
        self.upstream_errors = meter.create_counter("chat.upstream.errors", description="Provider errors by code")
        self.sockets = meter.create_up_down_counter(
            "chat.websocket.connections.active", description="WebSocket connections open now"
        )
        self.sockets.add(0)
        register_process_metrics(meter)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._provider.shutdown()

    # -- streams (the ChatService's observer) ---------------------------------------------------

    def stream_opened(self, stream: ChatStream) -> None:
        stream.metric_attrs = {"transport": stream.transport, "model": stream.model}
        self.active[(stream.transport,)] += 1

    def stream_first_byte(self, stream: ChatStream) -> None:
        assert stream.first_byte_at is not None
        self.ttfb.record(stream.first_byte_at - stream.started_at, stream.metric_attrs)

    def stream_first_token(self, stream: ChatStream) -> None:
        assert stream.first_token_at is not None
        if stream.cache_status == "HIT":
            return  # a replay never called the provider
        self.ttft.record(stream.first_token_at - stream.upstream_started_at, stream.metric_attrs)

    def stream_closed(self, stream: ChatStream) -> None:
        attrs = stream.metric_attrs
        outcome = stream.outcome or "completed"
        self.active[(stream.transport,)] -= 1
        self.outcomes[(stream.transport, stream.model, outcome)] += 1
        self.duration.record((stream.ended_at or stream.started_at) - stream.started_at, {**attrs, "outcome": outcome})
        if stream.chunks:
            self.chunks[(stream.transport, stream.model)] += stream.chunks
        self._usage(stream.model, stream.usage)
        if stream.error is not None:
            self.upstream_error(stream.model, stream.error)

    # -- whole JSON calls -----------------------------------------------------------------------

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
    ) -> None:
        attrs = {"transport": "json", "model": model}
        if responded:
            self.ttfb.record(ended_at - started_at, attrs)
        if outcome == "completed" and upstream_started_at >= 0:
            self.ttft.record(ended_at - upstream_started_at, attrs)
        self.outcomes[("json", model, outcome)] += 1
        self.duration.record(ended_at - started_at, {**attrs, "outcome": outcome})
        self._usage(model, usage)
        if error is not None:
            self.upstream_error(model, error)

    def upstream_attempt(self, model: str, deployment: str, outcome: str) -> None:
        """One attempt on a deployment (providers/resilient.py): ok, error, retried or fallback."""
        self.upstream_requests[(model, deployment, outcome)] += 1

    def upstream_error(self, model: str, error: GatewayError) -> None:
        # The class's own code, never the provider's free-form code: the label set stays fixed.
        self.upstream_errors.add(1, {"model": model, "code": error.default_code})

    def _usage(self, model: str, usage: Usage | None) -> None:
        if usage is None:
            return
        if usage.prompt_tokens:
            self.tokens[(model, "input")] += usage.prompt_tokens
        if usage.completion_tokens:
            self.tokens[(model, "output")] += usage.completion_tokens

    # -- HTTP, cache, sockets -------------------------------------------------------------------

    def http_request(self, scope: dict[str, Any], status: int, duration: float) -> None:
        if scope.get("type") != "http":
            return
        method = scope.get("method", "")
        self.http_duration.record(
            duration,
            {
                "method": method if method in KNOWN_METHODS else "OTHER",
                # Unmatched paths share one label: raw paths would make the series count unbounded.
                "route": scope.get("path_template") or "unmatched",
                "status_code": str(status),
            },
        )

    def resume_result(self, result: str) -> None:
        self.resumes[(result,)] += 1

    def cache_result(self, result: str) -> None:
        self.cache_requests[(result,)] += 1

    # -- gateway keys' limits and spend (the limiter's observer) ---------------------------------

    def rate_limited(self, key: str, reason: str) -> None:
        self.rate_limits[(key, reason)] += 1

    def spent(self, key: str, model: str, usd: float) -> None:
        self.spend[(key, model)] = self.spend.get((key, model), 0.0) + usd

    def limiter_outage(self) -> None:
        self.limiter_outages[()] += 1

    def usage_estimated(self, model: str) -> None:
        self.usage_estimates[(model,)] += 1

    def socket_opened(self) -> None:
        self.sockets.add(1)

    def socket_closed(self) -> None:
        self.sockets.add(-1)


def _observe(
    tally: Mapping[tuple[str, ...], float], names: tuple[str, ...]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An observable instrument's callback: one observation per label set in ``tally``."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        # A copy: the scrape must not see the dict change size under it.
        return [Observation(value, dict(zip(names, key, strict=True))) for key, value in list(tally.items())]

    return observe
