"""The in-place histograms render what OpenTelemetry's Prometheus reader rendered for the same records."""

from __future__ import annotations

import threading

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.observability.histograms import Histogram, Histograms
from app.observability.metrics import TTFB_BUCKETS

RECORDS = [
    # On a bucket's upper bound (inclusive), between bounds, past the last one, and zero.
    (0.001, {"transport": "sse", "model": "a"}),
    (0.0011, {"transport": "sse", "model": "a"}),
    (0.05, {"transport": "ws", "model": "a"}),
    (31.0, {"transport": "sse", "model": "a"}),
    (0.0, {"transport": "sse", "model": "b"}),
    (0.3, {"model": "a", "transport": "sse"}),  # the same label set, built in another order
]


def _otel(records: list[tuple[float, dict[str, str]]]) -> bytes:
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry, disable_target_info=True, scope_info_enabled=False)
    provider = MeterProvider(metric_readers=[reader])
    histogram = provider.get_meter("t").create_histogram(
        "chat.time_to_first_byte", unit="s", description="TTFB", explicit_bucket_boundaries_advisory=TTFB_BUCKETS
    )
    for value, attributes in records:
        histogram.record(value, attributes)
    try:
        return generate_latest(registry)
    finally:
        provider.shutdown()


def _ours(records: list[tuple[float, dict[str, str]]]) -> bytes:
    registry = CollectorRegistry(auto_describe=True)
    histogram = Histogram("chat_time_to_first_byte_seconds", "TTFB", TTFB_BUCKETS)
    registry.register(Histograms(histogram))
    for value, attributes in records:
        histogram.record(value, attributes)
    return generate_latest(registry)


def _lines(exposition: bytes) -> list[str]:
    return sorted(exposition.decode().splitlines())


def test_the_same_records_render_the_same_series_as_opentelemetry() -> None:
    ours, theirs = _lines(_ours(RECORDS)), _lines(_otel(RECORDS))
    assert any('le="0.001"' in line and line.endswith(" 1.0") for line in ours)  # 0.001 is in le=0.001
    assert ours == theirs


def test_nothing_is_rendered_before_the_first_record() -> None:
    assert _ours([]) == _otel([]) == b""


def test_a_scrape_in_another_thread_sees_whole_series() -> None:
    # The loop records while a worker-metrics thread renders: every rendered series stays consistent
    # (its +Inf bucket equals its count) and the scrape never fails on the dict changing size.
    histogram = Histogram("h_seconds", "h", (0.1, 1.0))
    registry = CollectorRegistry(auto_describe=True)
    registry.register(Histograms(histogram))
    stop = threading.Event()

    def record() -> None:
        i = 0
        while not stop.is_set():
            histogram.record(0.5, {"n": str(i % 500)})
            i += 1

    writer = threading.Thread(target=record)
    writer.start()
    try:
        for _ in range(50):
            infs, counts = {}, {}
            for family in text_string_to_metric_families(generate_latest(registry).decode()):
                for sample in family.samples:
                    if sample.name == "h_seconds_bucket" and sample.labels["le"] == "+Inf":
                        infs[sample.labels["n"]] = sample.value
                    elif sample.name == "h_seconds_count":
                        counts[sample.labels["n"]] = sample.value
            assert infs == counts and counts
    finally:
        stop.set()
        writer.join(5)
