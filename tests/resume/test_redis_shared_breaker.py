"""One circuit breaker per Redis server for the cache, the limiter and the resume store, against real
redis-server processes stalled with SIGSTOP (never the shared one on 6379).

The first timeout of any user opens it for all: from then on no user spends anything on Redis until
a probe answers. Through a whole gateway (``loadtests/redis_outage.py --features all``): a stall costs
one op bound, once, and nothing after; one ``redis_unavailable`` line and one ``redis_available``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.redis.breaker import BackendUnavailable
from app.redis.breakers import RedisBreakers, server_of
from app.redis.resp import RespClient
from loadtests.processes import GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml
from loadtests.redis_outage import MODEL, UPSTREAM_MODEL, all_features_env, run_phases
from tests.conftest import wait_until


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path).start()
    yield server
    server.stop()


def test_one_breaker_per_server_whatever_the_database() -> None:
    assert server_of("redis://127.0.0.1:7000/1") == server_of("redis://127.0.0.1:7000/3") == "127.0.0.1:7000"
    assert server_of("redis://h") == "h:6379"
    breakers = RedisBreakers()
    a = breakers.user("redis://127.0.0.1:7000/1", "cache", 0.5)
    b = breakers.user("redis://127.0.0.1:7000/2", "rate_limit", 0.25)
    c = breakers.user("redis://127.0.0.1:7001/0", "resume_store", 0.5)
    assert a._breaker is b._breaker is not c._breaker
    assert (a.op_timeout_s, b.op_timeout_s) == (0.5, 0.25)


async def test_the_first_timeout_of_one_user_opens_it_for_every_user(redis_process: RedisProcess) -> None:
    breakers = RedisBreakers(probe_timeout_s=0.3)
    cache = breakers.user(redis_process.url, "cache", 0.3)
    limits = breakers.user(redis_process.url, "rate_limit", 0.2)
    client = RespClient(redis_process.url, timeout_s=5)
    try:
        assert await limits.run(client.call, "PING") == b"PONG"
        redis_process.pause()
        started = time.perf_counter()
        with pytest.raises(BackendUnavailable):
            await limits.run(client.call, "PING")
        assert 0.15 < time.perf_counter() - started < 0.6  # the limiter's own bound, once
        # Every other user, and every later call, is refused at once: no I/O, no bound to wait.
        for user in (cache, limits, cache):
            started = time.perf_counter()
            with pytest.raises(BackendUnavailable):
                await user.run(client.call, "PING")
            assert time.perf_counter() - started < 0.02
        assert not await cache.check()  # readiness: at once while open
        redis_process.resume()
        await wait_until(lambda: cache.available, 5.0, "the probe to close the breaker")
        assert await cache.run(client.call, "PING") == b"PONG"
    finally:
        redis_process.resume()
        await client.close()
        await breakers.aclose()


@pytest.mark.timeout(180)
def test_gateway_through_a_stall_with_cache_limits_and_resume_on_one_redis(tmp_path: Path) -> None:
    upstream = UpstreamProcess(tmp_path, max_seconds=170).wait_ready()
    redis_server = RedisProcess(tmp_path).start()
    env = {
        "CHAT_CACHE__ENABLED": "true",
        "CHAT_CACHE__BACKEND": "redis",
        "CHAT_CACHE__REDIS_URL": redis_server.url,
        **all_features_env(redis_server.url),
    }
    gateway = GatewayProcess(tmp_path, deployments_toml({MODEL: UPSTREAM_MODEL}, upstream.base_url), env)
    try:
        gateway.wait_ready()
        op_timeout = 0.5  # the cache's and the resume store's; the limiter's is shorter
        phases = run_phases(
            gateway,
            redis_server,
            kind="stop",
            concurrency=8,
            requests=300,
            outage_s=3.0,
            op_timeout_s=op_timeout,
            streams=True,
        )
        result = asyncio.run(asyncio.wait_for(phases, 150))
        names = {"redis_unavailable", "redis_available"}
        events = [e for e in gateway.log_events() if e.get("event") in names]
    finally:
        gateway.stop()
        redis_server.stop()
        upstream.stop()
    print(result)
    assert result["outage_non_200"] == 0 and result["after_non_200"] == 0
    # Only the requests in flight when Redis stalled pay an op bound (one of the three users' bounds,
    # not their sum); every later one costs nothing (a margin of 1%, at least 2, for a loaded machine).
    margin = max(2, result["outage_requests"] // 100)
    assert result["outage_slow_requests"] <= 8 + margin
    late, before = result["outage_after_first_window"], result["before"]
    assert late["n"] >= 20
    assert late["p50_ms"] < before["p50_ms"] + 25, (late, before)
    assert late["p95_ms"] < op_timeout * 1000 / 2, late
    checks = result["ready_during_outage"]["body"]["checks"]
    assert (checks["cache"], checks["rate_limit"], checks["resume_store"]) == ("unavailable",) * 3
    assert result["recovered_after_s"] is not None
    # One breaker: one line when the stall began (by whichever user met it first), one when it ended.
    assert [e["event"] for e in events] == ["redis_unavailable", "redis_available"], events
    assert events[0]["by"] in ("cache", "rate_limit", "resume_store")
