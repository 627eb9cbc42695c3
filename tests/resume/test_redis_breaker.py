"""The Redis circuit breaker and the idle-closing pool, against real redis-server processes.

Every test starts its own redis-server on a free port (the shared one on 6379 is never stopped):
a stalled Redis (SIGSTOP) costs one op bound and then nothing; a killed one fails fast; one log
line per outage start and end, with counts; only outage errors open the circuit; idle pooled
connections are closed. The last test runs ``python -m app`` under load through a stall and
through a kill and restart (``loadtests/redis_outage.py``) and checks the per-request cost, the
log and the counters.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio import Redis

from app.redis.breaker import BackendUnavailable, CircuitBreaker
from app.redis.pool import IdleClosingPool, pool_options
from loadtests.processes import ROOT, GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml
from loadtests.redis_outage import MODEL, UPSTREAM_MODEL, configured_op_timeout, run_phases
from tests.conftest import wait_until

OP_TIMEOUT_S = 0.2


class ListLogger:
    """Collects the breaker's log calls (it takes its logger as a constructor argument)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
async def client(redis_process: RedisProcess) -> AsyncIterator[Redis]:
    pool = IdleClosingPool(host="127.0.0.1", port=redis_process.port, **pool_options(OP_TIMEOUT_S, idle_close_s=0.4))
    c = Redis(connection_pool=pool)
    yield c
    await c.aclose()
    await pool.disconnect()


def make_breaker(client: Redis, log: ListLogger) -> CircuitBreaker:
    return CircuitBreaker(
        "test", client.ping, op_timeout_s=OP_TIMEOUT_S, target="loopback", backoff_s=0.1, max_backoff_s=0.4, logger=log
    )


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable):
        await fn()
    return time.perf_counter() - t0


async def test_stalled_redis_costs_one_op_bound_then_nothing(redis_process: RedisProcess, client: Redis) -> None:
    log = ListLogger()
    breaker = make_breaker(client, log)
    try:
        await breaker.run(client.set, "k", "v")
        redis_process.pause()
        first = await timed(lambda: breaker.run(client.get, "k"))
        assert 0.8 * OP_TIMEOUT_S < first < 1.0, f"the first failure should take the op bound, took {first:.3f} s"
        assert not breaker.available
        costs = sorted([await timed(lambda: breaker.run(client.get, "k")) for _ in range(500)])
        # A waited-out call costs the op bound (0.2 s). The 99th percentile shows that refusals cost
        # nothing. The max allows for one pause of the machine, the GIL or the collector, but stays
        # far below the bound.
        assert costs[494] < 0.005, f"1% of refused calls took over {costs[494] * 1000:.2f} ms"
        assert costs[-1] < 0.05, f"a refused call took {costs[-1] * 1000:.2f} ms"
        t0 = time.perf_counter()
        assert await breaker.check() is False
        assert time.perf_counter() - t0 < 0.05, "readiness must not wait on an open circuit"
        await asyncio.sleep(0.6)  # probes fail meanwhile (each waits out the op bound)
        assert log.names == ["redis_unavailable"]
        redis_process.resume()
        await wait_until(lambda: breaker.available, 3.0, "the probe to close the circuit")
        assert await breaker.run(client.get, "k") == b"v"
        assert await breaker.check() is True
    finally:
        redis_process.resume()
        await breaker.aclose()
    assert log.names == ["redis_unavailable", "redis_available"]
    ended = log.events[1][1]
    assert (ended["skipped"], ended["failed"]) == (500, 1)
    assert ended["probes"] >= 2 and ended["outage_s"] >= 0.6
    assert "TimeoutError" in log.events[0][1]["error"]


async def test_inflight_calls_at_the_stall_fail_once_and_log_once(redis_process: RedisProcess, client: Redis) -> None:
    log = ListLogger()
    breaker = make_breaker(client, log)
    try:
        await asyncio.gather(*(breaker.run(client.set, f"k{i}", "v") for i in range(20)))
        redis_process.pause()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(breaker.run(client.get, f"k{i}") for i in range(20)), return_exceptions=True)
        assert time.perf_counter() - t0 < 1.0
        assert all(isinstance(r, BackendUnavailable) for r in results)
        redis_process.resume()
        await wait_until(lambda: breaker.available, 3.0, "recovery")
    finally:
        redis_process.resume()
        await breaker.aclose()
    assert log.names == ["redis_unavailable", "redis_available"]
    assert log.events[1][1]["failed"] == 20 and log.events[1][1]["skipped"] == 0


async def test_killed_redis_fails_fast_and_comes_back_on_restart(redis_process: RedisProcess, client: Redis) -> None:
    log = ListLogger()
    breaker = make_breaker(client, log)
    try:
        # Several pooled connections, every one of them dead once Redis restarts.
        await asyncio.gather(*(breaker.run(client.set, f"k{i}", "v") for i in range(10)))
        redis_process.kill()
        first = await timed(lambda: breaker.run(client.get, "k"))
        assert first < OP_TIMEOUT_S, "a refused connection is an immediate failure"
        assert "ConnectionError" in log.events[0][1]["error"]
        for _ in range(50):
            await timed(lambda: breaker.run(client.get, "k"))
        await asyncio.sleep(0.3)
        redis_process.start()
        await wait_until(lambda: breaker.available, 3.0, "recovery after restart")
        # Stale pooled connections are reconnected by one retry, not taken for a new outage.
        results = await asyncio.gather(*(breaker.run(client.get, f"k{i}") for i in range(10)))
        assert results == [None] * 10  # a new, empty Redis
    finally:
        await breaker.aclose()
    assert log.names == ["redis_unavailable", "redis_available"]
    assert (log.events[1][1]["skipped"], log.events[1][1]["failed"]) == (50, 1)


async def test_errors_redis_answered_do_not_open_the_circuit(client: Redis) -> None:
    log = ListLogger()
    breaker = make_breaker(client, log)
    await breaker.run(client.set, "text", "not a number")
    with pytest.raises(redis.exceptions.ResponseError):
        await breaker.run(client.incr, "text")
    assert breaker.available and log.events == []
    assert await breaker.run(client.get, "text") == b"not a number"
    await breaker.aclose()


async def test_a_late_failure_from_before_an_outage_does_not_reopen_it() -> None:
    """Fakes, because the order of events must be exact: a call started while closed fails only
    after an outage has come and gone; the circuit stays closed."""
    log = ListLogger()
    up = asyncio.Event()

    async def probe() -> None:
        if not up.is_set():
            raise ConnectionError("down")

    async def fail_now() -> None:
        raise ConnectionError("refused")

    slow_gate = asyncio.Event()

    async def fail_later() -> None:
        await slow_gate.wait()
        raise ConnectionError("reset")

    breaker = CircuitBreaker("fake", probe, op_timeout_s=5, backoff_s=0.05, max_backoff_s=0.05, logger=log)
    slow = asyncio.create_task(breaker.run(fail_later))
    await asyncio.sleep(0)
    with pytest.raises(BackendUnavailable):
        await breaker.run(fail_now)
    up.set()
    await wait_until(lambda: breaker.available, 2.0, "recovery")
    slow_gate.set()
    with pytest.raises(BackendUnavailable):
        await slow
    assert breaker.available
    assert log.names == ["redis_unavailable", "redis_available"]
    await breaker.aclose()


def client_count(port: int) -> int:
    """Connections the server holds, minus the one asking (CLIENT LIST over a raw socket)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"CLIENT LIST\r\n")
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        header, body = data.split(b"\r\n", 1)
        assert header.startswith(b"$"), header
        while len(body) < int(header[1:]) + 2:  # a bulk string: $<length>, the text, CRLF
            body += sock.recv(65536)
    return sum(1 for line in body.splitlines() if line.startswith(b"id=")) - 1


async def test_idle_connections_are_closed(redis_process: RedisProcess, client: Redis) -> None:
    await asyncio.gather(*(client.blpop(["nothing"], timeout=0.1) for _ in range(12)))
    assert client_count(redis_process.port) >= 12
    pool = client.connection_pool
    assert isinstance(pool, IdleClosingPool)
    await wait_until(lambda: client_count(redis_process.port) == 0, 3.0, "idle connections to be closed")
    # The pool still works: a closed connection is simply opened again.
    assert await client.ping() is True
    assert client_count(redis_process.port) == 1


async def test_busy_connections_are_kept(redis_process: RedisProcess, client: Redis) -> None:
    """A connection used more often than idle_close_s is never closed under the caller."""
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert await client.ping() is True
        await asyncio.sleep(0.05)
    assert client_count(redis_process.port) == 1


# -- the whole gateway under load ----------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["stop", "kill"])
def test_gateway_under_load_through_a_redis_outage(tmp_path: Path, kind: str) -> None:
    """SIGSTOP: Redis stalls (calls time out); SIGKILL then a restart on the same port: refused
    connections, then every pooled connection is stale."""
    upstream = UpstreamProcess(tmp_path, max_seconds=170).wait_ready()
    redis_server = RedisProcess(tmp_path).start()
    env = {"CHAT_CACHE__ENABLED": "true", "CHAT_CACHE__BACKEND": "redis", "CHAT_CACHE__REDIS_URL": redis_server.url}
    gateway = GatewayProcess(tmp_path, deployments_toml({MODEL: UPSTREAM_MODEL}, upstream.base_url), env)
    try:
        gateway.wait_ready()
        op_timeout = configured_op_timeout(ROOT)
        phases = run_phases(
            gateway, redis_server, kind=kind, concurrency=8, requests=900, outage_s=3.0, op_timeout_s=op_timeout
        )
        result = asyncio.run(asyncio.wait_for(phases, 150))
        events = [e for e in gateway.log_events() if "redis" in str(e.get("event")) or "cache" in str(e.get("event"))]
    finally:
        gateway.stop()
        redis_server.stop()
        upstream.stop()
    print(result)
    assert result["outage_non_200"] == 0 and result["after_non_200"] == 0
    # Only the requests in flight when Redis stalled pay the op bound; after that, nothing (a margin of
    # 1% of the outage's requests, at least 2, for pauses of a loaded machine that are not Redis's).
    margin = max(2, result["outage_requests"] // 100)
    assert result["outage_slow_requests"] <= (8 if kind == "stop" else 0) + margin
    late, before = result["outage_after_first_window"], result["before"]
    assert late["n"] >= 20  # enough for the percentiles below; how many fit in the outage depends on the load
    assert late["p50_ms"] < before["p50_ms"] + 25, (late, before)
    assert late["p95_ms"] < op_timeout * 1000 / 2, late
    assert result["ready_during_outage"]["status"] == 503
    assert result["ready_during_outage"]["body"]["checks"]["cache"] == "unavailable"
    assert result["ready_during_outage"]["ms"] < 100
    assert result["recovered_after_s"] is not None
    # Exactly two log lines, and their counts add up to what /metrics counted.
    assert [e["event"] for e in events] == ["redis_unavailable", "redis_available"], events
    ended = events[1]
    # Every request in the outage made one read and one write; each failed or was skipped. A write of the
    # last requests before it may still have been on its way when Redis went (at most one per client).
    assert ended["skipped"] + ended["failed"] == result["cache_errors_during_outage"]
    assert 2 * result["outage_requests"] <= result["cache_errors_during_outage"] <= 2 * result["outage_requests"] + 8
    assert 1 <= ended["failed"] <= 16
