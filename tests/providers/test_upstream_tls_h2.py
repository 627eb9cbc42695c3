"""The fake upstream's TLS mode (``loadtests.upstream --tls``) and the matrix's issue-15 cells.

The upstream runs as its own process with a throwaway CA, as ``loadtests.run_matrix --h2`` starts
it: the relay's own HTTP/2 client reads from it in-process (a body larger than a stream's window,
so the upstream's flow control is exercised), the load generator reads over TLS + HTTP/1.1, and a
real ``python -m app`` relays one SSE stream over h2. The matrix's plan and report are checked
without running it. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from app.config.settings import settings_from_dict
from app.providers.upstream import RequestTemplate, UpstreamPool
from loadtests import run_matrix
from loadtests.loadgen import LoadConfig, http_get, run_load
from loadtests.processes import GatewayProcess, UpstreamProcess, deployments_toml
from tests.helpers.matrix_report import report_matrix
from tests.helpers.sse import post_raw, read_to_done

CHUNKS = 5

# A gateway process starts in each test (LiteLLM's import alone takes seconds on a loaded machine).
pytestmark = pytest.mark.timeout(120)


class TlsUpstream:
    def __init__(self, process: UpstreamProcess, ca_file: Path) -> None:
        self.process = process
        self.ca_file = ca_file

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.process.port}"

    async def stats(self) -> dict[str, Any]:
        status, body = await http_get(self.url + "/stats", 5.0, str(self.ca_file))
        assert status == 200, body
        return dict(json.loads(body))


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsUpstream]:
    work = tmp_path_factory.mktemp("tls-upstream")
    ca_file = work / "ca.pem"
    extra = ["--tls", "--ca-file", str(ca_file), "--chunks", str(CHUNKS)]
    process = UpstreamProcess(work, max_seconds=120, extra=extra)
    try:
        process.wait_ready(10.0)
        yield TlsUpstream(process, ca_file)
    finally:
        process.stop()


async def test_the_relay_client_reads_a_body_larger_than_the_window_over_h2(tls_upstream: TlsUpstream) -> None:
    before = await tls_upstream.stats()
    ctx = ssl.create_default_context(cafile=str(tls_upstream.ca_file))
    url = URL(tls_upstream.url + "/v1/chat/completions")
    pool = UpstreamPool(url.origin(), ssl_context=ctx)
    try:
        # ~240 KB of JSON: four times a stream's 64 KB window, so it goes out as the client opens it.
        body = json.dumps({"model": "big-n40000-f0-g0", "messages": []}).encode()
        response = await asyncio.wait_for(
            pool.post(RequestTemplate(url, {"Content-Type": "application/json"}), body), 5
        )
        assert response.status == 200
        assert response.stream_id != 0  # HTTP/2: ALPN picked h2
        answer = json.loads(await asyncio.wait_for(response.read(), 10))
        response.release()
    finally:
        await pool.aclose()
    assert answer["choices"][0]["message"]["content"].count(" w") == 40000
    after = await tls_upstream.stats()
    assert after["h2_requests"] - before["h2_requests"] == 1
    assert after["h2_connections"] - before["h2_connections"] == 1


async def test_loadgen_reads_sse_over_tls_and_http11(
    tls_upstream: TlsUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_upstream.ca_file))  # loadgen trusts what the gateway would
    before = await tls_upstream.stats()
    cfg = LoadConfig(url=tls_upstream.url, mode="sse", concurrency=2, requests=4, duration=10, timeout=5)
    s = await asyncio.wait_for(run_load(cfg), 20)
    assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
    assert (s["ok"], s["chunks"]) == (4, 4 * CHUNKS)
    after = await tls_upstream.stats()
    assert after["h2_requests"] == before["h2_requests"]  # loadgen offers http/1.1 only
    assert after["tls_connections"] > before["tls_connections"]


def test_a_real_gateway_relays_an_sse_stream_over_h2(tls_upstream: TlsUpstream, tmp_path: Path) -> None:
    toml = deployments_toml({run_matrix.H2: "fast"}, tls_upstream.url + "/v1")
    gateway = GatewayProcess(tmp_path, toml, env={"SSL_CERT_FILE": str(tls_upstream.ca_file)})
    try:
        gateway.wait_ready(90.0)
        before = asyncio.run(tls_upstream.stats())
        cfg = LoadConfig(
            url=gateway.base_url, mode="sse", model=run_matrix.H2, concurrency=1, requests=1, duration=5, timeout=5
        )
        s = asyncio.run(asyncio.wait_for(run_load(cfg), 15))
        after = asyncio.run(tls_upstream.stats())
    finally:
        gateway.stop()
    # Every content chunk and [DONE] (a stream without it counts as a no_done error).
    assert s["errors"] == 0, (s["error_kinds"], s["error_samples"])
    assert (s["ok"], s["chunks"]) == (1, CHUNKS)
    assert after["h2_requests"] - before["h2_requests"] == 1
    assert after["h2_connections"] >= 1


def test_a_pushed_stream_over_h2_survives_a_client_that_stops_reading(
    tls_upstream: TlsUpstream, tmp_path: Path
) -> None:
    # 100,000 chunks sent as fast as the window allows (~20 MB of SSE), to a client that reads
    # nothing for 1.5 s: the gateway's client socket fills, the pushed stream withholds the h2
    # window (the provider stops), and once the client reads again the acknowledgements go out and
    # the stream ends intact. A lost acknowledgement would stall it until the test's timeout.
    toml = deployments_toml({"big": "big-n100000-f0-g0"}, tls_upstream.url + "/v1")
    gateway = GatewayProcess(tmp_path, toml, env={"SSL_CERT_FILE": str(tls_upstream.ca_file)})

    async def read_all() -> bytes:
        body = b'{"model": "big", "stream": true, "messages": [{"role": "user", "content": "go"}]}'
        reader, writer = await post_raw(gateway.port, body)
        received = await asyncio.wait_for(reader.read(65536), 10)
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        await asyncio.sleep(1.5)  # the scenario: a client that reads nothing for a while
        async with asyncio.timeout(20):
            received = await read_to_done(reader, received)
        writer.close()
        return received

    try:
        gateway.wait_ready(90.0)
        before = asyncio.run(tls_upstream.stats())
        received = asyncio.run(read_all())
        after = asyncio.run(tls_upstream.stats())
    finally:
        gateway.stop()
    assert b"event: error" not in received
    assert received.count(b'"content":" w') == 100_000
    assert after["h2_requests"] - before["h2_requests"] == 1


def test_the_matrix_plans_and_configures_the_resilience_and_h2_cells() -> None:
    base = ["--concurrency", "32", "--modes", "sse", "--deployments", "fast", "--idle", "0"]
    plain = run_matrix.build_plan(run_matrix.parse_args(base))
    assert not [c for c in plain if c.group]
    args = run_matrix.parse_args([*base, "--resilience", "--h2", "--resilience-rounds", "2"])
    plan = run_matrix.build_plan(args)
    shape = [(c.target, c.model, c.concurrency, c.group, c.round, c.up_key) for c in plan if c.group]
    fast, res, retry, h2 = "fast", run_matrix.RESILIENT, run_matrix.RETRY, run_matrix.H2

    def abba(other: str) -> list[tuple[int, str]]:  # each round's pair, the order turned every other round
        return [(1, fast), (1, other), (2, other), (2, fast)]

    expected = [("gateway", m, c, "resilience", r, "stream") for c in (32, 256) for r, m in abba(res)]
    expected += [("gateway", m, c, "retry", r, "stream") for c in (1, 32) for r, m in abba(retry)]
    expected += [(t, m, c, "h2", 0, "h2") for c in (32, 256) for t, m in (("direct", fast), ("gateway", h2))]
    assert shape == expected
    settings = settings_from_dict(
        tomllib.loads(run_matrix.gateway_toml(8000, {"stream": 9100}, failing_port=9101, h2_port=9102)), {}
    )
    deployments = settings.models.deployments
    by_name = {d.name: d for d in deployments}
    assert (by_name[res].num_retries, by_name[res].fallbacks) == (1, ["fast"])
    assert by_name[res].api_base == by_name[fast].api_base
    assert by_name[h2].api_base == "https://127.0.0.1:9102/v1"
    group = [d for d in deployments if d.name == retry]
    assert sorted(d.api_base for d in group) == ["http://127.0.0.1:9100/v1", "http://127.0.0.1:9101/v1"]
    assert all(d.num_retries == 1 for d in group)


def test_the_report_compares_each_pair_of_cells() -> None:
    base = ["--concurrency", "32", "--modes", "sse", "--deployments", "fast"]
    args = run_matrix.parse_args([*base, "--resilience", "--h2", "--resilience-rounds", "1"])
    with report_matrix(args) as m:
        summary = {
            "fast": (1000.0, 0.100, 55.0),
            run_matrix.RESILIENT: (990.0, 0.104, 55.0),
            run_matrix.RETRY: (1000.0, 0.100, 57.5),
            run_matrix.H2: (1000.0, 0.120, 56.0),
        }
        for cell in run_matrix.build_plan(args):
            cps, cpu, ttfb = summary[cell.model]
            cell.summary = {
                "requests": 320,
                "ok": 320,
                "errors": 0,
                "chunks_per_s": cps,
                "server": {"cpu_s_per_1k_chunks": cpu},
                "ttfb_ms": {"p50": ttfb, "p95": ttfb, "p99": ttfb + 5},
                "warmup": {"requests": 32},
            }
            cell.extra = {"h2_requests": 352, "h2_connections": 1, "h2_connections_total": 1}
            m.cells.append(cell)
        text = "\n".join(run_matrix._comparison_lines(m))
    assert "| 32 | 1 | 1000 / 990 | -1.0% | 0.100 / 0.104 | +4.0% | +4.0% | 0 / 0 |" in text
    assert "| 1 | 1 | 55.0 / 60.0 | 57.5 / 62.5 | +2.5 / +2.5 | 0 / 0 |" in text
    assert "| 32 | 1000 | 1000 | 1.00 | 0.120 | 0.100 | +20.0% | 352 / 352 | 1 / 1 | 0 |" in text
