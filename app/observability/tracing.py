"""Traces: one span per chat request, following OpenTelemetry's GenAI conventions.

A span starts when the gateway calls the provider for a request (as the child of the client's W3C
``traceparent`` when one came) and ends with the request: model, deployment, transport, tokens,
finish reasons and outcome as attributes, first byte and first token as events. The span's context
goes to the provider as ``traceparent`` on both provider paths, so a provider that traces joins the
same trace.

Spans are exported by OTLP/HTTP from the SDK's ``BatchSpanProcessor``: ended spans go into a bounded
queue and a background thread sends them in batches, so a request never waits on the collector,
and a dead collector costs one failed POST per batch in that thread (a full queue drops spans).
The tracer provider is the app's own (built in the lifespan), not the process-global one.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_trace_id, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.config.settings import TracingSettings
from app.domain.errors import GatewayError

if TYPE_CHECKING:
    from app.core.stream import ChatStream
    from app.domain.chunks import Usage

#: The exporter's own request timeout, in its background thread: short, since a slow collector only
#: delays later batches, and a full queue drops spans rather than grow.
EXPORT_TIMEOUT_S = 2.0

_propagator = TraceContextTextMapPropagator()


class Tracing:
    def __init__(self, settings: TracingSettings) -> None:
        # Imported here: the exporter and protobuf cost start-up time that a gateway without
        # tracing should not pay.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT_S)
        self._provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=4096,
                schedule_delay_millis=200,
                max_export_batch_size=128,
                export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
            )
        )
        self._tracer = self._provider.get_tracer("chat-gateway")
        # The exporter logs every failed batch through the standard library, and the batch processor
        # every span a full queue drops: a collector that is down would fill the log once a second,
        # and then once a request.
        for name in (
            "opentelemetry.exporter.otlp.proto.http",
            "opentelemetry.sdk.trace.export",
            "opentelemetry.sdk._shared_internal",  # the batch processor's own logger (SDK 1.3x and later)
        ):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def start(
        self, model: str, deployment_model: str, transport: str, traceparent: str | None, started_at: float
    ) -> Span:
        """The request's span, child of the client's ``traceparent`` when it sent a valid one."""
        parent: Context | None = _propagator.extract({"traceparent": traceparent}) if traceparent else None
        provider = deployment_model.split("/", 1)[0]
        return self._tracer.start_span(
            f"chat {model}",
            context=parent,
            kind=SpanKind.CLIENT,
            # perf_counter -> wall clock in ns, so the span starts when the request arrived.
            start_time=time.time_ns() - int((time.perf_counter() - started_at) * 1e9),
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.system": provider,
                "gen_ai.request.model": model,
                "chat.deployment.model": deployment_model,
                "chat.transport": transport,
            },
        )

    @staticmethod
    def headers(span: Span) -> dict[str, str]:
        """The W3C trace context of ``span``, for the provider's request."""
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=set_span_in_context(span))
        return carrier

    @staticmethod
    def trace_id(span: Span) -> str | None:
        context = span.get_span_context()
        return format_trace_id(context.trace_id) if context.is_valid else None

    @staticmethod
    def end(
        span: Span,
        *,
        outcome: str,
        usage: Usage | None,
        finish_reason: str | None,
        error: GatewayError | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        attributes: dict[str, Any] = {"chat.outcome": outcome, **(extra or {})}
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [finish_reason]
        if error is not None:
            attributes["error.type"] = error.code
            span.set_status(Status(StatusCode.ERROR, error.message[:200]))
        span.set_attributes(attributes)
        span.end()

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the export timeout) and stop the export thread."""
        self._provider.shutdown()


class StreamTracer:
    """The stream observer that records a stream's milestones on its span."""

    def stream_opened(self, stream: ChatStream) -> None:
        return None

    def stream_first_byte(self, stream: ChatStream) -> None:
        if stream.span is not None:
            stream.span.add_event("chat.first_byte")

    def stream_first_token(self, stream: ChatStream) -> None:
        if stream.span is not None:
            stream.span.add_event("chat.first_token")

    def stream_closed(self, stream: ChatStream) -> None:
        if stream.span is not None:
            Tracing.end(
                stream.span,
                outcome=stream.outcome or "completed",
                usage=stream.usage,
                finish_reason=stream.finish_reason,
                error=stream.error,
                extra={"chat.stream_id": stream.id, "chat.chunks": stream.chunks},
            )
