"""Several workers (``server.workers = 2``) under a real ``python -m app``: every scrape of /metrics
describes the whole server, whichever worker answers it; merging is exact (unit test below)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics
from app.observability.metrics_merge import merge_expositions
from app.observability.worker_metrics import WORKER_METRICS_DIR_ENV
from loadtests.processes import GatewayProcess, UpstreamProcess, deployments_toml, http_get

SCRAPES = 30
STREAMS = 6


def value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# -- merging ---------------------------------------------------------------------------------------


def test_merge_sums_counters_histograms_and_gauges() -> None:
    a, b = Metrics(), Metrics()
    try:
        for m, n in ((a, 3), (b, 4)):
            m.outcomes[("sse", "demo", "completed")] += n
            m.active[("sse",)] += n
            m.ttfb.record(0.02 * n, {"transport": "sse", "model": "demo"})
        b.outcomes[("json", "demo", "timeout")] += 1  # a series only one worker has
        merged = merge_expositions([a.render().decode(), b.render().decode()]).decode()
    finally:
        a.shutdown()
        b.shutdown()
    assert value(merged, "chat_stream_outcomes_total", transport="sse", outcome="completed") == 7
    assert value(merged, "chat_stream_outcomes_total", transport="json", outcome="timeout") == 1
    assert value(merged, "chat_streams_active", transport="sse") == 7
    assert value(merged, "chat_time_to_first_byte_seconds_count") == 2
    assert value(merged, "chat_time_to_first_byte_seconds_sum") == pytest.approx(0.14)
    assert value(merged, "chat_time_to_first_byte_seconds_bucket", le="0.1") == 2
    assert value(merged, "chat_time_to_first_byte_seconds_bucket", le="0.075") == 0
    assert "# TYPE chat_stream_outcomes_total counter" in merged
    assert "# TYPE chat_streams_active gauge" in merged
    assert merged.count("# TYPE chat_time_to_first_byte_seconds histogram") == 1


def test_merge_of_one_exposition_is_that_exposition() -> None:
    m = Metrics()
    try:
        m.outcomes[("sse", "demo", "completed")] += 2
        m.ttfb.record(0.3, {"transport": "sse", "model": "demo"})
        text = m.render()
    finally:
        m.shutdown()
    assert merge_expositions([text.decode()]) == text


# -- the real server -------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def ask_worker(sock: Path) -> str:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data.decode()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    tmp = tmp_path_factory.mktemp("workers")
    upstream = UpstreamProcess(tmp, max_seconds=170, extra=["--first-ms", "5", "--chunks", "3", "--gap-ms", "1"])
    upstream.wait_ready()
    config = deployments_toml({"fast": "fast", "slow": "slow"}, upstream.base_url)
    # Headers go out with the first event; a short heartbeat makes that event come at once.
    env = {"CHAT_SERVER__WORKERS": "2", "CHAT_STREAMING__STATUS_WINDOW_S": "0", "CHAT_STREAMING__HEARTBEAT_S": "0.2"}
    gateway = GatewayProcess(tmp, config, env)
    try:
        gateway.wait_ready(timeout=90)
        deadline = time.monotonic() + 30
        directory: Path | None = None
        while True:
            kids = children_of(gateway.pid)
            dirs = {environ_of(k).get(WORKER_METRICS_DIR_ENV) for k in kids} - {None}
            if dirs:
                directory = Path(dirs.pop() or "")
                if len(list(directory.glob("worker-*.sock"))) == 2:
                    break
            assert time.monotonic() < deadline, f"two worker sockets did not appear (children {kids})"
            time.sleep(0.1)
        yield gateway, directory
    finally:
        status = gateway.stop()
        upstream.stop()
    assert status == 0, f"the supervisor exited with {status}"
    assert directory is not None and not directory.exists(), "the metrics directory outlived the server"


@pytest.fixture
async def fresh() -> AsyncIterator[httpx.AsyncClient]:
    """A client that opens a new connection for every request, so that either worker may answer."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, limits=limits) as c:
        yield c


@pytest.mark.timeout(180)
async def test_one_scrape_counts_every_worker(
    two_workers: tuple[GatewayProcess, Path], fresh: httpx.AsyncClient
) -> None:
    gateway, directory = two_workers
    sockets = sorted(directory.glob("worker-*.sock"))
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    sent = 0

    async def send(n: int) -> None:
        nonlocal sent
        responses = await asyncio.gather(
            *(fresh.post(gateway.base_url + "/v1/chat/completions", json=body) for _ in range(n))
        )
        assert [r.status_code for r in responses] == [200] * n
        sent += n

    # Until both workers have served requests (the kernel spreads new connections between them).
    deadline = time.monotonic() + 30
    while True:
        await send(20)
        own = [value(await ask_worker(s), "chat_stream_outcomes_total", transport="json") for s in sockets]
        if all(own):
            break
        assert time.monotonic() < deadline, f"one worker never got a request: {own}"
    await send(17)  # an odd total, to be sure nothing is halved or doubled
    own = [value(await ask_worker(s), "chat_stream_outcomes_total", transport="json") for s in sockets]
    assert sum(own) == sent

    seen = []
    for _ in range(SCRAPES):
        text = (await fresh.get(gateway.base_url + "/metrics")).text
        seen.append(value(text, "chat_stream_outcomes_total", transport="json", outcome="completed"))
    assert seen == [sent] * SCRAPES, f"per-worker {own}, scrapes {seen}"
    print(f"json requests per worker {own}, {SCRAPES} scrapes all {sent}")

    # Process metrics describe the whole server: about the sum of the workers' resident memory.
    text = (await fresh.get(gateway.base_url + "/metrics")).text
    workers_rss = sum(rss_bytes(int(s.stem.removeprefix("worker-"))) for s in sockets)
    assert 0.75 * workers_rss < value(text, "process_resident_memory_bytes") < 1.25 * workers_rss
    assert value(text, "process_open_fds") >= 2 * 8


@pytest.mark.timeout(180)
async def test_streams_active_counts_streams_on_both_workers(
    two_workers: tuple[GatewayProcess, Path], fresh: httpx.AsyncClient
) -> None:
    gateway, directory = two_workers
    sockets = sorted(directory.glob("worker-*.sock"))
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "wait"}]}

    async def active() -> float:
        return value((await fresh.get(gateway.base_url + "/metrics")).text, "chat_streams_active", transport="sse")

    async def open_stream(stack: contextlib.AsyncExitStack) -> None:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))  # a connection of its own
        response = await stack.enter_async_context(
            client.stream("POST", gateway.base_url + "/v1/chat/completions", json=body)
        )
        assert response.status_code == 200

    async with contextlib.AsyncExitStack() as stack:
        await asyncio.wait_for(asyncio.gather(*(open_stream(stack) for _ in range(STREAMS))), 20)
        deadline = time.monotonic() + 10
        while await active() != STREAMS:
            assert time.monotonic() < deadline, "the open streams were not all counted"
            await asyncio.sleep(0.05)
        own = [value(await ask_worker(s), "chat_streams_active", transport="sse") for s in sockets]
        seen = [await active() for _ in range(SCRAPES)]
        assert seen == [STREAMS] * SCRAPES, f"per-worker {own}, scrapes {seen}"
        print(f"open streams per worker {own}, {SCRAPES} scrapes all {STREAMS}")
        assert sum(own) == STREAMS
    deadline = time.monotonic() + 10
    while await active() != 0:
        assert time.monotonic() < deadline, "closed streams were still counted"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
def test_a_dead_worker_is_replaced_and_the_parent_says_so_in_a_json_line(tmp_path: Path) -> None:
    upstream = UpstreamProcess(tmp_path, max_seconds=170, extra=["--first-ms", "5", "--chunks", "3", "--gap-ms", "1"])
    gateway: GatewayProcess | None = None
    try:
        upstream.wait_ready()
        config = deployments_toml({"fast": "fast"}, upstream.base_url)
        gateway = GatewayProcess(tmp_path, config, {"CHAT_SERVER__WORKERS": "2", "CHAT_SERVER__LOG_LEVEL": "info"})
        gateway.wait_ready(timeout=90)

        deadline = time.monotonic() + 30
        while not (dirs := {environ_of(k).get(WORKER_METRICS_DIR_ENV) for k in children_of(gateway.pid)} - {None}):
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.1)
        directory = Path(dirs.pop() or "")

        def workers() -> set[int]:
            return {int(s.stem.removeprefix("worker-")) for s in directory.glob("worker-*.sock")}

        deadline = time.monotonic() + 30
        while len(before := workers()) != 2:
            assert time.monotonic() < deadline, f"two workers did not start: {before}"
            time.sleep(0.1)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)

        deadline = time.monotonic() + 30
        while True:
            died = [e for e in gateway.log_events() if e.get("event") == f"Child process [{victim}] died"]
            after = workers() - {victim}
            if died and len(after) == 2:
                break
            assert time.monotonic() < deadline, f"no JSON line for the death of {victim}, or no replacement: {after}"
            time.sleep(0.1)
        assert died[0]["logger"] == "uvicorn.error" and died[0]["level"] == "info"
        assert "timestamp" in died[0]
        started = [e for e in gateway.log_events() if str(e.get("event", "")).startswith("Started parent process")]
        assert started, "the parent's start was not logged as a JSON line"
        # Nothing the parent wrote came out as bare text.
        bare = [
            line
            for line in gateway.child.log.read_text().splitlines()
            if "Child process" in line and not line.startswith("{")
        ]
        assert bare == []
        status, _ = http_get(gateway.base_url + "/v1/models")
        assert status == 200
    finally:
        try:
            if gateway is not None:
                gateway.stop()
        finally:
            upstream.stop()
