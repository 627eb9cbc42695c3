"""Traces: spans exported by OTLP/HTTP to a small receiver on loopback, the client's
traceparent honoured, the trace context sent on to the provider on both paths, a dead collector free."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from app.config.settings import settings_from_dict
from tests.conftest import ServerThread, make_settings, settings_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import stream_chat

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint that keeps every span it is sent."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        """``hold``: every export waits for it (up to 10 s) before it is answered (a stalled collector)."""
        self.spans: list[Any] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if hold is not None:
                    hold.wait(10)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            receiver.spans.extend((resource, span) for span in scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> tuple[Any, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for resource, span in self.spans:
                    if predicate(span):
                        return resource, span
            time.sleep(0.05)
        raise AssertionError(f"no such span among {len(self.spans)} exported")

    def stop(self) -> None:
        self._server.shutdown()


def attributes(span: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        values[kv.key] = (
            [v.string_value for v in value.array_value.values] if kind == "array_value" else getattr(value, kind)
        )
    return values


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=["fast", "full"])
def traced(
    request: pytest.FixtureRequest, fake_provider: FakeProvider, receiver: OtlpReceiver
) -> Iterator[ServerThread]:
    data = settings_dict(
        fake_provider.base_url,
        fast_path=request.param == "fast",
        tracing={"enabled": True, "otlp_endpoint": receiver.url, "service_name": "gateway-under-test"},
    )
    data["models"]["deployments"].append(
        {
            "name": "embed",
            "litellm_model": "openai/embed",
            "api_base": fake_provider.base_url,
            "fast_path": request.param == "fast",
            "info": {"mode": "embedding"},
        }
    )
    server = ServerThread(settings_from_dict(data, environ={})).start()
    yield server
    server.stop()


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "normal", "messages": [{"role": "user", "content": "trace me"}], **extra}


async def test_stream_span_follows_the_client_traceparent(
    traced: ServerThread, fake: FakeProvider, receiver: OtlpReceiver
) -> None:
    async with httpx.AsyncClient(base_url=traced.base_url, timeout=10) as client:
        result = await stream_chat(
            client, body(stream=True, stream_options={"include_usage": True}), headers={"traceparent": TRACEPARENT}
        )
    assert result.status == 200
    stream_id = result.headers["x-stream-id"]
    resource, span = receiver.wait_for(lambda s: attributes(s).get("chat.stream_id") == stream_id)
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_SPAN_ID
    assert span.name == "chat normal"
    attrs = attributes(span)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "normal"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["chat.transport"] == "sse"
    assert attrs["chat.outcome"] == "completed"
    assert attrs["gen_ai.usage.input_tokens"] == 7 and attrs["gen_ai.usage.output_tokens"] == 10
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert [e.name for e in span.events] == ["chat.first_token", "chat.first_byte"] or [
        e.name for e in span.events
    ] == ["chat.first_byte", "chat.first_token"]
    service = {kv.key: kv.value.string_value for kv in resource.resource.attributes}["service.name"]
    assert service == "gateway-under-test"
    # The provider was called with the gateway's span as the parent, in the same trace.
    sent = fake.requests[0].headers.get("traceparent", "")
    assert sent.split("-")[1] == TRACE_ID
    assert sent.split("-")[2] == span.span_id.hex()


async def test_json_span_and_provider_context(traced: ServerThread, fake: FakeProvider, receiver: OtlpReceiver) -> None:
    async with httpx.AsyncClient(base_url=traced.base_url, timeout=10) as client:
        response = await client.post("/v1/chat/completions", json=body(user="json-span"))
    assert response.status_code == 200
    sent = fake.requests[0].headers["traceparent"]
    trace_id = sent.split("-")[1]
    _, span = receiver.wait_for(
        lambda s: s.trace_id.hex() == trace_id and attributes(s).get("chat.transport") == "json"
    )
    assert attributes(span)["chat.outcome"] == "completed"
    assert span.span_id.hex() == sent.split("-")[2]


async def test_an_embeddings_call_carries_the_trace_to_the_provider(
    traced: ServerThread, fake: FakeProvider, receiver: OtlpReceiver
) -> None:
    async with httpx.AsyncClient(base_url=traced.base_url, timeout=10) as client:
        response = await client.post(
            "/v1/embeddings", json={"model": "embed", "input": "trace me"}, headers={"traceparent": TRACEPARENT}
        )
    assert response.status_code == 200, response.text
    sent = fake.requests[-1].headers.get("traceparent", "")
    assert sent.split("-")[1:2] == [TRACE_ID]  # the client's trace, under the gateway's span
    _, span = receiver.wait_for(lambda s: s.span_id.hex() == sent.split("-")[2])
    assert span.parent_span_id.hex() == PARENT_SPAN_ID


async def test_error_span_has_the_error_type(traced: ServerThread, receiver: OtlpReceiver) -> None:
    async with httpx.AsyncClient(base_url=traced.base_url, timeout=10) as client:
        response = await client.post("/v1/chat/completions", json={**body(), "model": "rate_limited"})
    assert response.status_code == 429
    _, span = receiver.wait_for(lambda s: attributes(s).get("gen_ai.request.model") == "rate_limited")
    assert attributes(span)["error.type"] == "rate_limit_exceeded"
    assert span.status.code == 2  # ERROR


async def _twenty_calls(server: ServerThread) -> tuple[float, float]:
    """(total, slowest) seconds of 20 JSON calls one after another."""
    took = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        for _ in range(20):
            started = time.monotonic()
            response = await client.post("/v1/chat/completions", json={**body(), "model": "fast"})
            took.append(time.monotonic() - started)
            assert response.status_code == 200
    return sum(took), max(took)


@pytest.mark.parametrize("collector", ["refused", "silent"])
async def test_a_dead_collector_costs_nothing(fake_provider: FakeProvider, collector: str) -> None:
    """A collector that refuses connections, or accepts them and never answers (an export that
    waited on it would take the exporter's 2 s timeout): calls cost what they cost untraced."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes handshakes; nothing ever reads
        port = silent.getsockname()[1] if collector == "silent" else 9
        dead = make_settings(
            fake_provider.base_url, tracing={"enabled": True, "otlp_endpoint": f"http://127.0.0.1:{port}/v1/traces"}
        )
        plain, server = ServerThread(make_settings(fake_provider.base_url)).start(), ServerThread(dead).start()
        try:
            await _twenty_calls(plain)  # warm-up: connections, first-call paths
            await _twenty_calls(server)
            # Exports run every 0.2 s in their own thread: 20 calls span several of them.
            untraced, untraced_max = await _twenty_calls(plain)
            traced, traced_max = await _twenty_calls(server)
        finally:
            server.stop()
            plain.stop()
    figures = (
        f"20 calls: {traced:.3f} s (slowest {traced_max:.3f}) vs {untraced:.3f} s (slowest {untraced_max:.3f}) untraced"
    )
    assert traced < 2 * untraced + 0.25, figures
    assert traced_max < untraced_max + 0.25, figures


def test_spans_a_full_queue_drops_are_not_logged_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    # A stalled collector holds the export thread, so the queue (4096 spans) fills and every span
    # after it is dropped: each drop was a warning line, one a request.
    from app.config.settings import TracingSettings
    from app.observability.tracing import Tracing

    hold = threading.Event()
    receiver = OtlpReceiver(hold)
    tracing = Tracing(TracingSettings(enabled=True, otlp_endpoint=receiver.url))
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(4096 + 200):
                span = tracing.start("m", "openai/m", "json", None, time.perf_counter())
                tracing.end(span, outcome="ok", usage=None, finish_reason=None, error=None)
    finally:
        hold.set()  # the collector answers again: the shutdown's flush goes through
        tracing.shutdown()
        receiver.stop()
    logged = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert logged == [], [r.getMessage() for r in logged[:3]]
    assert 0 < len(receiver.spans) < 4096 + 200  # some were dropped, and the rest exported
