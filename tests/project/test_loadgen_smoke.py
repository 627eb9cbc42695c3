"""CI smoke for the load-testing harness (``loadtests/``): the fast fake upstream and the load generator.

The upstream runs as its own process, as in ``loadtests.run_matrix``; the load generator runs in the
test's event loop, straight against the upstream (no gateway), in SSE and JSON modes. Every wait is
bounded; the whole file takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.bench_micro import protocol_request, push_path
from loadtests.loadgen import LoadConfig, run_load
from loadtests.upstream import PhaseSequence

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = 20
REQUESTS = 20

pytestmark = pytest.mark.timeout(30)


class Upstream:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start_upstream(*extra: str) -> Iterator[Upstream]:
    argv = [sys.executable, "-m", "loadtests.upstream", "--port", "0", "--chunks", str(CHUNKS), "--max-seconds", "60"]
    yield from _start([*argv, *extra])


def _start(argv: list[str]) -> Iterator[Upstream]:
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, f"{argv[2]} did not print READY within 10 s"
        line = proc.stdout.readline()
        assert line.startswith(b"READY "), line
        yield Upstream(proc, int(line.split()[1]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    yield from _start_upstream()  # per-stream timers, the default


@pytest.fixture(scope="module")
def wheel_upstream() -> Iterator[Upstream]:
    yield from _start_upstream("--timers", "wheel")


def _assert_percentiles(dist: dict[str, float | None], what: str) -> None:
    for key in ("p50", "p95", "p99"):
        assert key in dist, f"{what} has no {key}"
        assert dist[key] is not None, f"{what} {key} is missing"
    assert dist["p50"] <= dist["p95"] <= dist["p99"]  # type: ignore[operator]


async def test_sse_against_upstream(upstream: Upstream) -> None:
    cfg = LoadConfig(
        url=upstream.url,
        mode="sse",
        concurrency=4,
        requests=REQUESTS,
        duration=10,
        timeout=5,
        upstream_pid=upstream.proc.pid,
    )
    s = await asyncio.wait_for(run_load(cfg), 20)
    assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
    assert s["cut"] == 0
    assert s["requests"] == REQUESTS
    assert s["ok"] == REQUESTS
    assert s["chunks_per_request"] == {str(CHUNKS): REQUESTS}
    assert s["chunks"] == CHUNKS * REQUESTS
    for what in ("ttfb_ms", "gap_ms", "total_ms"):
        _assert_percentiles(s[what], what)
    # The upstream sends its first chunk after 50 ms: a TTFB below that means the clock is wrong.
    assert s["ttfb_ms"]["p50"] >= 45
    assert s["req_per_s"] > 0 and s["chunks_per_s"] > 0
    assert s["upstream"]["cpu_s"] is not None and s["upstream"]["rss_mb_max"] is not None


async def test_json_against_upstream(upstream: Upstream) -> None:
    cfg = LoadConfig(url=upstream.url, mode="json", concurrency=4, requests=REQUESTS, duration=10, timeout=5)
    s = await asyncio.wait_for(run_load(cfg), 20)
    assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
    assert s["requests"] == REQUESTS
    assert s["ok"] == REQUESTS
    for what in ("ttfb_ms", "total_ms"):
        _assert_percentiles(s[what], what)
    assert s["total_ms"]["p50"] >= 45
    assert s["req_per_s"] > 0


async def test_embeddings_against_upstream(upstream: Upstream) -> None:
    cfg = LoadConfig(
        url=upstream.url, mode="json", api="embeddings", model="embed", concurrency=4, requests=8, timeout=5
    )
    s = await asyncio.wait_for(run_load(cfg), 20)
    assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
    assert (s["requests"], s["ok"]) == (8, 8)
    # The upstream answers an embeddings call after its --embed-ms (50 ms by default).
    assert s["total_ms"]["p50"] >= 45


def test_the_matrix_plans_embeddings_cells_with_their_direct_baseline() -> None:
    from loadtests import run_matrix

    args = ["--concurrency", "32", "--modes", "embeddings", "--deployments", "fast", "--idle", "0"]
    plan = run_matrix.build_plan(run_matrix.parse_args(args))
    assert [(c.target, c.mode, c.model, c.concurrency) for c in plan if c.mode == "embeddings"] == [
        ("direct", "embeddings", "embed", 32),
        ("gateway", "embeddings", "embed", 32),
    ]
    assert 'mode = "embedding"' in run_matrix.gateway_toml(8000, {"stream": 8001})


async def test_sse_against_the_wheel_variant_with_an_unmeasured_warm_up(wheel_upstream: Upstream) -> None:
    cfg = LoadConfig(url=wheel_upstream.url, mode="sse", concurrency=4, requests=8, warmup=4, duration=10, timeout=5)
    s = await asyncio.wait_for(run_load(cfg), 20)
    assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
    assert s["warmup"] == {"requests": 4, "ok": 4, "errors": 0, "error_kinds": {}}
    assert (s["requests"], s["ok"], s["chunks"]) == (8, 8, 8 * CHUNKS)  # the warm-up is not counted
    # Without a phase the first chunk comes 50 ms after the request (the wheel rounds up to 1 ms); the
    # upper bound leaves room for a loaded machine.
    assert 45 <= s["ttfb_ms"]["p50"] < 100
    assert s["host"] is not None and s["host"]["others_cores"] >= 0


async def test_sse_through_the_bare_relay(upstream: Upstream) -> None:
    # The floor the gateway's CPU is compared with: the same bytes copied between sockets.
    argv = [sys.executable, "-m", "loadtests.bare_relay", "--port", "0", "--upstream-port", str(upstream.port)]
    with contextlib.contextmanager(_start)(argv) as relay:
        cfg = LoadConfig(
            url=relay.url, mode="sse", concurrency=4, requests=8, duration=10, timeout=5, pid=relay.proc.pid
        )
        s = await asyncio.wait_for(run_load(cfg), 20)
        assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
        assert (s["ok"], s["chunks"]) == (8, 8 * CHUNKS)
        assert s["server"]["cpu_s"] is not None


@pytest.mark.parametrize(
    "module",
    [
        "loadtests.asgi_floor",  # the same server and upstream client as the gateway, no gateway
        "loadtests.protocol_floor",  # below ASGI: its own HTTP/1.1 protocol and the gateway's upstream client
    ],
)
async def test_json_embeddings_and_sse_through_a_floor(upstream: Upstream, module: str) -> None:
    argv = [sys.executable, "-m", module, "--port", "0", "--upstream", upstream.url]
    with contextlib.contextmanager(_start)(argv) as floor:
        for api, model in (("chat", "fast"), ("embeddings", "embed")):
            cfg = LoadConfig(url=floor.url, mode="json", api=api, model=model, concurrency=4, requests=8, timeout=5)
            s = await asyncio.wait_for(run_load(cfg), 20)
            assert s["errors"] == 0, (api, s["error_kinds"], s["error_samples"])
            assert (s["requests"], s["ok"]) == (8, 8)
            assert s["total_ms"]["p50"] >= 45  # the upstream's own 50 ms (embeddings) or more, relayed
        cfg = LoadConfig(url=floor.url, mode="sse", concurrency=4, requests=8, duration=10, timeout=5)
        s = await asyncio.wait_for(run_load(cfg), 20)
        assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
        assert (s["ok"], s["chunks"]) == (8, 8 * CHUNKS)  # every chunk, over kept-alive connections


def test_the_matrix_plans_a_bare_relay_cell_next_to_each_headline_direct_cell() -> None:
    from loadtests import run_matrix

    base = ["--concurrency", "32,256", "--modes", "sse", "--deployments", "fast", "--idle", "0"]
    base += ["--timers", "stream,wheel", "--variant-concurrency", "32"]
    assert not [c for c in run_matrix.build_plan(run_matrix.parse_args(base)) if c.target == "bare"]
    plan = run_matrix.build_plan(run_matrix.parse_args([*base, "--bare"]))
    shape = [(c.target, c.concurrency, c.timers) for c in plan if c.mode == "sse"]
    assert shape == [
        ("direct", 32, "stream"),
        ("bare", 32, "stream"),
        ("gateway", 32, "stream"),
        ("direct", 256, "stream"),
        ("bare", 256, "stream"),
        ("gateway", 256, "stream"),
        ("direct", 32, "wheel"),  # the floor is measured once, on the headline timers
        ("gateway", 32, "wheel"),
    ]


def test_the_matrix_plans_the_floors_beside_the_bare_relay_and_before_the_gateway() -> None:
    from loadtests import run_matrix

    args = ["--concurrency", "32", "--modes", "sse,json", "--deployments", "fast", "--idle", "0"]
    assert not [c for c in run_matrix.build_plan(run_matrix.parse_args(args)) if c.target in run_matrix.FLOORS]
    plan = run_matrix.build_plan(run_matrix.parse_args([*args, "--bare", "--floors"]))
    assert [(c.target, c.mode, c.model) for c in plan] == [
        ("direct", "sse", "fast"),
        ("bare", "sse", "fast"),
        ("proto", "sse", "fast"),
        ("asgi", "sse", "fast"),
        ("gateway", "sse", "fast"),
        ("direct", "json", "fast"),
        ("proto", "json", "fast"),
        ("asgi", "json", "fast"),
        ("gateway", "json", "fast"),
    ]


def test_stream_phases_are_spread_evenly_and_repeat_after_a_reset() -> None:
    phases = PhaseSequence()
    first = [phases.take() for _ in range(32)]
    assert all(0.0 <= p < 1.0 for p in first)
    ordered = sorted(first)
    widest = max(b - a for a, b in zip([0.0, *ordered], [*ordered, 1.0], strict=True))
    assert widest < 3 / 32  # no stretch of the gap without streams (a random draw leaves ~4/32)
    phases.reset()
    assert [phases.take() for _ in range(32)] == first  # every cell gets the same phases


async def test_the_push_path_benchmark_writes_every_chunk() -> None:
    per_read_us, written = await push_path(reads=50, streams=2)
    # Each read is one chunk framed as `id: <stream>:<seq>` + its data, chunk-encoded: at least the
    # provider's event itself, 100 times.
    assert per_read_us > 0
    assert written > 100 * 150


async def test_the_protocol_benchmark_answers_every_request() -> None:
    per_request_us, writes = await protocol_request(requests=50)
    assert per_request_us > 0
    assert writes == 50  # each answer's head and (empty) body in one write
