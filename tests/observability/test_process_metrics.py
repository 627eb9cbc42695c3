"""Process metrics (API.md 5): present on /metrics under their Prometheus names, read at scrape time."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics
from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def single(text: str, name: str) -> float:
    series = families(text)[name]
    assert list(series) == [()], f"{name} should be one unlabelled series, got {series}"
    return series[()]


def vm_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.shutdown()


def test_process_metrics_are_plausible_and_read_at_scrape_time(metrics: Metrics) -> None:
    first = metrics.render().decode()
    rss = single(first, "process_resident_memory_bytes")
    assert 10 * 2**20 < rss < 8 * 2**30
    assert abs(rss - vm_rss_bytes()) < 64 * 2**20, "RSS should match the kernel's VmRSS"
    cpu = single(first, "process_cpu_seconds_total")
    fds = single(first, "process_open_fds")
    assert cpu > 0 and fds >= 3  # stdin, stdout, stderr at least

    # 200 files, asserted with a margin of 50: the test's other threads (servers, the fake provider)
    # may open or close a socket between the scrapes.
    held = [tempfile.TemporaryFile() for _ in range(200)]
    try:
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:  # burn CPU that the next scrape must see
            pass
        second = metrics.render().decode()
    finally:
        for f in held:
            f.close()
    assert single(second, "process_open_fds") >= fds + 150
    assert single(second, "process_cpu_seconds_total") >= cpu + 0.25
    assert single(metrics.render().decode(), "process_open_fds") <= single(second, "process_open_fds") - 150


def test_gc_counts_per_generation(metrics: Metrics) -> None:
    import gc

    before = families(metrics.render().decode())["python_gc_collections_total"]
    assert set(before) == {(("generation", str(g)),) for g in range(len(gc.get_stats()))}
    gc.collect(0)
    after = families(metrics.render().decode())["python_gc_collections_total"]
    assert after[(("generation", "0"),)] >= before[(("generation", "0"),)] + 1
    assert "python_gc_objects_collected_total" in families(metrics.render().decode())


def test_types_on_the_endpoint(fake_provider: FakeProvider) -> None:
    server = ServerThread(make_settings(fake_provider.base_url)).start()
    try:
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    finally:
        server.stop()
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert kinds["process_resident_memory_bytes"] == "gauge"
    assert kinds["process_cpu_seconds"] == "counter"  # the parser strips _total from the family name
    assert kinds["process_open_fds"] == "gauge"
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert single(text, "process_open_fds") > 3  # the listener and the client connection at least
