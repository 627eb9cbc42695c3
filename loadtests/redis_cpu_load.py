"""Does CPU load alone open the cache's circuit? Chat load on a gateway whose cache is in a healthy
Redis, with busy-looping processes competing for the cores, counting ``redis_unavailable`` lines.

``python -m loadtests.redis_cpu_load --op-timeout-s 0.25,0.5,1 --seconds 60 --hogs 2`` runs one
cell per op bound: the fast fake upstream, a private redis-server and ``python -m app`` (all on
127.0.0.1), ``--hogs`` processes spinning at the same priority, and SSE + JSON users (a quarter of
the prompts repeat, so there are hits as well as misses and writes). Redis never fails here, so
every trip is the op bound firing because the event loop (or Redis) did not get the CPU in time.
``--features all`` puts the rate limiter and the resume store in the same Redis (one shared
breaker, ``app/redis_breakers.py``) and sets ``rate_limit.op_timeout_s`` to the cell's bound too,
so a cell counts the trips of every Redis user. Prints one JSON line per cell. Bounded by
``--seconds`` per cell, a per-request timeout and ``--max-seconds`` overall; the hogs are killed
with their cell.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.processes import PY, Child, GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml
from loadtests.redis_outage import all_features_env, cache_errors

MODEL = "paced"
UPSTREAM_MODEL = "paced-f20-n20-g5"  # ~120 ms streams: many concurrent, like real chat traffic
HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


async def users(base_url: str, sse: int, json_users: int, seconds: float) -> dict[str, int]:
    counts = {"ok": 0, "failed": 0}
    deadline = time.monotonic() + seconds
    serial = itertools.count()

    def body(stream: bool) -> dict[str, Any]:
        n = next(serial)
        prompt = f"repeat {n % 50}" if random.random() < 0.25 else f"unique {n} {time.time_ns()}"
        return {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": prompt}]}

    async def user(client: httpx.AsyncClient, stream: bool) -> None:
        while time.monotonic() < deadline:
            try:
                if stream:
                    async with client.stream("POST", "/v1/chat/completions", json=body(True)) as r:
                        async for _ in r.aiter_bytes():
                            pass
                        ok = r.status_code == 200
                else:
                    ok = (await client.post("/v1/chat/completions", json=body(False))).status_code == 200
            except httpx.HTTPError:
                ok = False
            counts["ok" if ok else "failed"] += 1

    limits = httpx.Limits(max_connections=sse + json_users + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        streams = [user(client, True) for _ in range(sse)]
        await asyncio.gather(*streams, *[user(client, False) for _ in range(json_users)])
    return counts


def run_cell(op_timeout_s: float, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="redis-cpu-") as tmp:
        work = Path(tmp)
        upstream = UpstreamProcess(work, max_seconds=args.seconds + 120).wait_ready()
        redis = RedisProcess(work).start()
        env = {
            "CHAT_CACHE__ENABLED": "true",
            "CHAT_CACHE__BACKEND": "redis",
            "CHAT_CACHE__REDIS_URL": redis.url,
            "CHAT_CACHE__OP_TIMEOUT_S": str(op_timeout_s),
        }
        if args.features == "all":
            env.update(all_features_env(redis.url))
            env["CHAT_RATE_LIMIT__OP_TIMEOUT_S"] = str(op_timeout_s)
        gateway = GatewayProcess(work, deployments_toml({MODEL: UPSTREAM_MODEL}, upstream.base_url), env)
        hogs: list[Child] = []
        try:
            gateway.wait_ready()
            asyncio.run(users(gateway.base_url, 4, 2, 3))  # warm-up, no hogs
            hogs = [Child([PY, "-c", HOG.format(s=args.seconds + 5)], work / f"hog{i}.log") for i in range(args.hogs)]
            t0 = time.monotonic()
            load = users(gateway.base_url, args.sse, args.json, args.seconds)
            counts = asyncio.run(asyncio.wait_for(load, args.seconds + 60))
            wall = time.monotonic() - t0
            errors = cache_errors(httpx.get(gateway.base_url + "/metrics", timeout=10).text)
            trips = [e for e in gateway.log_events() if e.get("event") == "redis_unavailable"]
        finally:
            for hog in hogs:
                hog.stop(0.5)
            gateway.stop()
            redis.stop()
            upstream.stop()
    return {
        "op_timeout_s": op_timeout_s,
        "features": args.features,
        "hogs": args.hogs,
        "seconds": round(wall, 1),
        "users": {"sse": args.sse, "json": args.json},
        "requests_ok": counts["ok"],
        "requests_failed": counts["failed"],
        "trips": len(trips),
        "cache_errors": errors,
        "trip_errors": [e.get("error") for e in trips[:5]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op-timeout-s", default="0.25,0.5,1.0", help="comma-separated op bounds, one cell each")
    parser.add_argument("--seconds", type=float, default=60.0, help="load per cell")
    parser.add_argument("--hogs", type=int, default=2, help="busy-looping processes during the load")
    parser.add_argument("--sse", type=int, default=20)
    parser.add_argument("--json", type=int, default=8)
    parser.add_argument("--features", choices=["cache", "all"], default="cache", help="all: limits and resume too")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    for raw in args.op_timeout_s.split(","):
        if time.monotonic() - started > args.max_seconds:
            print(json.dumps({"stopped": "max-seconds reached"}))
            break
        print(json.dumps(run_cell(float(raw), args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
