"""CI smoke for the load-testing harness (``loadtests/``): the fast fake upstream and the load generator.

The upstream runs as its own process, as in ``loadtests.run_matrix``; the load generator runs in the
test's event loop, straight against the upstream (no gateway), in SSE and JSON modes. Every wait is
bounded; the whole file takes a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.loadgen import LoadConfig, run_load

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    argv = [sys.executable, "-m", "loadtests.upstream", "--port", "0", "--chunks", str(CHUNKS), "--max-seconds", "60"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, "the upstream did not print READY within 10 s"
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
