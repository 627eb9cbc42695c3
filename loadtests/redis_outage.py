"""What a Redis outage costs each request: JSON chat load against a gateway whose cache is in Redis,
with Redis stalled (SIGSTOP) or killed (SIGKILL, then restarted) in the middle.

``python -m loadtests.redis_outage`` starts the fast fake upstream, a private redis-server and
``python -m app`` (all on 127.0.0.1), runs three phases at a fixed concurrency and prints one JSON
summary:

- ``before``: Redis up; every request has a unique prompt, so each is a cache miss plus a write;
- ``outage``: Redis stalled or killed for ``--outage-s``; per-request latency, split into the
  requests that started within ``2 x cache.op_timeout_s`` of the stop (they may have been in
  flight when Redis went away and paid the op bound once) and those that started later (with the
  circuit breaker these should cost what ``before`` cost);
- ``after``: Redis back; how long until ``/health/ready`` said 200 again, then requests again.

``--features all`` puts the rate limiter (a limit every request is far under) and the resume store
in the same Redis as the cache, and makes every other request a stream (each one's log is copied to
Redis): the three share one circuit breaker (``app/redis_breakers.py``), so one stall costs one op
bound in all, and there is one ``redis_unavailable`` line for it.

It also reports readiness during the outage, ``chat_cache_requests_total{result="error"}`` and the
gateway's ``redis_unavailable`` / ``redis_available`` log lines. ``--root`` runs another checkout of
the gateway (to measure an older commit the same way). Bounded: a request count per phase, a
per-request timeout, and a wall-clock cap.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.processes import ROOT, GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml

MODEL = "fast"
UPSTREAM_MODEL = "fast-f1-n2-g1"  # the whole answer in ~3 ms: the cache's cost is what is measured
_counter = itertools.count()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": _ms(percentile(values, 0.5)),
        "p95_ms": _ms(percentile(values, 0.95)),
        "max_ms": _ms(max(values) if values else None),
        "mean_ms": _ms(statistics.fmean(values) if values else None),
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def cache_errors(metrics_text: str) -> float:
    m = re.search(r'^chat_cache_requests_total\{result="error"\} ([0-9.e+]+)$', metrics_text, re.M)
    return float(m.group(1)) if m else 0.0


async def one_request(client: httpx.AsyncClient, streams: bool = False) -> tuple[float, float, int]:
    """(start, latency, status) of one chat request with a prompt never sent before: JSON, or with
    ``streams`` every other one an SSE stream read to its end."""
    n = next(_counter)
    prompt = f"outage probe {n} {time.time_ns()}"
    stream = streams and n % 2 == 1
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    start = time.monotonic()
    try:
        status = (await client.post("/v1/chat/completions", json=body)).status_code
    except httpx.HTTPError:
        status = 0  # no answer at all (a connection closed under the request): counted, not fatal
    return start, time.monotonic() - start, status


def all_features_env(redis_url: str) -> dict[str, str]:
    """Limits and resume in the cache's Redis: every request is admitted there, every stream logged."""
    return {
        "CHAT_REDIS__URL": redis_url,
        "CHAT_RATE_LIMIT__BACKEND": "redis",
        "CHAT_RATE_LIMIT__REQUESTS_PER_MINUTE": "10000000",
        "CHAT_RATE_LIMIT__CONCURRENT_STREAMS": "1000",
        "CHAT_STREAMING__RESUME_STORE": "redis",
    }


Result = tuple[float, float, int]


async def load(
    client: httpx.AsyncClient, concurrency: int, requests: int, seconds: float, streams: bool = False
) -> list[Result]:
    """``requests`` requests at ``concurrency``, or fewer if ``seconds`` run out first."""
    results: list[Result] = []
    deadline = time.monotonic() + seconds
    remaining = itertools.count()

    async def user() -> None:
        while next(remaining) < requests and time.monotonic() < deadline:
            results.append(await one_request(client, streams))

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return results


async def run_phases(
    gateway: GatewayProcess,
    redis: RedisProcess,
    *,
    kind: str,
    concurrency: int,
    requests: int,
    outage_s: float,
    op_timeout_s: float,
    streams: bool = False,
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10, limits=limits) as client:
        await load(client, concurrency, concurrency * 4, 10)  # warm-up: pools, caches, JIT-free paths
        before = await load(client, concurrency, requests, 30, streams)
        errors_before = cache_errors((await client.get("/metrics")).text)

        redis.pause() if kind == "stop" else redis.kill()
        stopped_at = time.monotonic()
        # Bounded by the outage's length rather than by ``requests``: on a fast machine that many
        # requests were all done inside the first window, leaving nothing to measure after it.
        during = await load(client, concurrency, 10 * requests, outage_s, streams)
        t0 = time.monotonic()
        ready = await client.get("/health/ready")
        ready_s = time.monotonic() - t0
        # Past the request budget, keep the outage going for its full length (recovery is timed from it).
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - stopped_at)))
        errors_during = cache_errors((await client.get("/metrics")).text) - errors_before

        redis.resume() if kind == "stop" else redis.start()
        back_at = time.monotonic()
        recovered_s = None
        while time.monotonic() - back_at < 15:
            if (await client.get("/health/ready")).status_code == 200:
                recovered_s = time.monotonic() - back_at
                break
            await asyncio.sleep(0.05)
        after = await load(client, concurrency, requests, 30, streams)

    window = 2 * op_timeout_s
    early = [lat for start, lat, _ in during if start - stopped_at < window]
    late = [lat for start, lat, _ in during if start - stopped_at >= window]
    return {
        "kind": kind,
        "concurrency": concurrency,
        "op_timeout_s": op_timeout_s,
        "before": summary_ms([lat for _, lat, _ in before]),
        "outage_first_window": summary_ms(early),
        "outage_after_first_window": summary_ms(late),
        # Requests that took the op bound or more; before and after the outage Redis answers, so
        # theirs are the machine's own pauses, measured under the same load.
        "outage_slow_requests": sum(1 for _, lat, _ in during if lat >= 0.8 * op_timeout_s),
        "before_slow_requests": sum(1 for _, lat, _ in before if lat >= 0.8 * op_timeout_s),
        "after_slow_requests": sum(1 for _, lat, _ in after if lat >= 0.8 * op_timeout_s),
        "outage_non_200": sum(1 for *_, status in during if status != 200),
        "outage_refused_429": sum(1 for *_, status in during if status == 429),
        "outage_added_ms_mean": _ms(
            statistics.fmean([lat for _, lat, _ in during]) - statistics.fmean([lat for _, lat, _ in before])
            if during and before
            else None
        ),
        "outage_requests": len(during),
        "ready_during_outage": {"status": ready.status_code, "ms": _ms(ready_s), "body": ready.json()},
        "cache_errors_during_outage": errors_during,
        "recovered_after_s": None if recovered_s is None else round(recovered_s, 3),
        "after": summary_ms([lat for _, lat, _ in after]),
        "after_non_200": sum(1 for *_, status in after if status != 200),
    }


def outage_log_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """The gateway's log lines about the cache's Redis (the breaker's pair, or older per-op warnings)."""
    names = {
        "redis_unavailable",
        "redis_available",
        "cache_unavailable",
        "rate_limit_backend_unavailable",
        "rate_limit_backend_recovered",
    }
    return [e for e in gateway.log_events() if e.get("event") in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["stop", "kill"], default="stop")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="per phase")
    parser.add_argument("--outage-s", type=float, default=5.0)
    parser.add_argument("--op-timeout-s", type=float, default=None, help="CHAT_CACHE__OP_TIMEOUT_S (default: config)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout of the gateway to run")
    parser.add_argument("--features", choices=["cache", "all"], default="cache", help="all: limits and resume too")
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="redis-outage-") as tmp:
        work = Path(tmp)
        upstream = UpstreamProcess(work, max_seconds=args.max_seconds).wait_ready()
        redis = RedisProcess(work).start()
        env = {"CHAT_CACHE__ENABLED": "true", "CHAT_CACHE__BACKEND": "redis", "CHAT_CACHE__REDIS_URL": redis.url}
        if args.op_timeout_s is not None:
            env["CHAT_CACHE__OP_TIMEOUT_S"] = str(args.op_timeout_s)
        if args.features == "all":
            env.update(all_features_env(redis.url))
        config = deployments_toml({MODEL: UPSTREAM_MODEL}, upstream.base_url)
        gateway = GatewayProcess(work, config, env, root=args.root)
        try:
            gateway.wait_ready()
            op_timeout = args.op_timeout_s or configured_op_timeout(args.root)
            result = asyncio.run(
                asyncio.wait_for(
                    run_phases(
                        gateway,
                        redis,
                        kind=args.kind,
                        concurrency=args.concurrency,
                        requests=args.requests,
                        outage_s=args.outage_s,
                        op_timeout_s=op_timeout,
                        streams=args.features == "all",
                    ),
                    args.max_seconds,
                )
            )
            lines = outage_log_lines(gateway)
            result["log_lines"] = len(lines)
            result["log_events"] = [{k: v for k, v in e.items() if k != "timestamp"} for e in lines[:4]]
        finally:
            gateway.stop()
            redis.stop()
            upstream.stop()
    print(json.dumps(result))
    return 0


def configured_op_timeout(root: Path) -> float:
    import tomllib

    data = tomllib.loads((root / "config" / "default.toml").read_text())
    return float(data.get("cache", {}).get("op_timeout_s", 0.25))


if __name__ == "__main__":
    sys.exit(main())
