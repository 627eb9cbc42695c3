"""OpenTelemetry metrics with the Prometheus exporter's reader on the app's own registry.

Instruments are created once per app (two apps in one process never share counters). Nothing is
recorded per chunk: a stream records at open, first byte, first token and close, with attribute
sets built once per stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from app.chat.stream import ChatStream
    from app.errors import GatewayError
    from app.providers.base import Usage

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
        self.http_duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="HTTP request duration by route template",
            explicit_bucket_boundaries_advisory=HTTP_BUCKETS,
        )
        self.ttfb = meter.create_histogram(
            "chat.time_to_first_byte",
            unit="s",
            description="Request received -> first event written",
            explicit_bucket_boundaries_advisory=TTFB_BUCKETS,
        )
        self.ttft = meter.create_histogram(
            "chat.time_to_first_token",
            unit="s",
            description="Upstream call started -> first content chunk",
            explicit_bucket_boundaries_advisory=TTFB_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "chat.stream.duration",
            unit="s",
            description="Stream duration by outcome",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.chunks = meter.create_counter("chat.stream.chunks", description="Chunks relayed to clients")
        self.active = meter.create_up_down_counter("chat.streams.active", description="Streams open now")
        self.outcomes = meter.create_counter("chat.stream.outcomes", description="Streams ended, by outcome")
        self.tokens = meter.create_counter("chat.tokens", description="Tokens from provider usage")
        self.upstream_errors = meter.create_counter("chat.upstream.errors", description="Provider errors by code")
        self.cache_requests = meter.create_counter("chat.cache.requests", description="Cache lookups by result")
        self.sockets = meter.create_up_down_counter(
            "chat.websocket.connections.active", description="WebSocket connections open now"
        )
        self._transport_attrs: dict[str, dict[str, str]] = {}
        self._cache_attrs = {r: {"result": r} for r in ("hit", "miss", "bypass", "error")}
        # Known label sets start at zero, so dashboards and rate() see the series before the first event.
        for attrs in self._cache_attrs.values():
            self.cache_requests.add(0, attrs)
        for transport in ("sse", "websocket"):
            self.active.add(0, self._transport(transport))
        self.sockets.add(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._provider.shutdown()

    # -- streams (the ChatService's observer) ---------------------------------------------------

    def stream_opened(self, stream: ChatStream) -> None:
        stream.metric_attrs = {"transport": stream.transport, "model": stream.model}
        self.active.add(1, self._transport(stream.transport))

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
        outcome_attrs = {**attrs, "outcome": stream.outcome or "completed"}
        self.active.add(-1, self._transport(stream.transport))
        self.outcomes.add(1, outcome_attrs)
        self.duration.record((stream.ended_at or stream.started_at) - stream.started_at, outcome_attrs)
        if stream.chunks:
            self.chunks.add(stream.chunks, attrs)
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
        outcome_attrs = {**attrs, "outcome": outcome}
        self.outcomes.add(1, outcome_attrs)
        self.duration.record(ended_at - started_at, outcome_attrs)
        self._usage(model, usage)
        if error is not None:
            self.upstream_error(model, error)

    def upstream_error(self, model: str, error: GatewayError) -> None:
        # The class's own code, never the provider's free-form code: the label set stays fixed.
        self.upstream_errors.add(1, {"model": model, "code": error.default_code})

    def _usage(self, model: str, usage: Usage | None) -> None:
        if usage is None:
            return
        if usage.prompt_tokens:
            self.tokens.add(usage.prompt_tokens, {"model": model, "direction": "input"})
        if usage.completion_tokens:
            self.tokens.add(usage.completion_tokens, {"model": model, "direction": "output"})

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

    def cache_result(self, result: str) -> None:
        self.cache_requests.add(1, self._cache_attrs[result])

    def socket_opened(self) -> None:
        self.sockets.add(1)

    def socket_closed(self) -> None:
        self.sockets.add(-1)

    def _transport(self, transport: str) -> dict[str, str]:
        attrs = self._transport_attrs.get(transport)
        if attrs is None:
            attrs = self._transport_attrs[transport] = {"transport": transport}
        return attrs
