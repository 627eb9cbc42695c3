"""Does the gateway's memory come back after load? RSS and the stream-log gauge idle, after a soak,
and after a quiet period.

``python -m loadtests.rss_soak --load-s 360 --idle-s 300`` runs the fast fake upstream and
``python -m app`` (``--store memory`` or ``redis``, the latter with a private redis-server), records
RSS (``/proc/<pid>/status``) and ``chat_resume_memory_bytes`` once ready, sends ``--concurrency``
SSE streams back to back for ``--load-s``, records again, waits ``--idle-s`` and records a third
time. ``--resume-ttl-s`` shortens ``streaming.resume_ttl_s`` so that a short run shows the sweep.
One JSON line. Bounded by the phases' lengths, a per-request timeout and ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.processes import ROOT, GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml
from loadtests.resume_redis_bytes import gauge, rss_mb

MODEL = "paced"
UPSTREAM_MODEL = "paced-n20-g5-f5"


async def sample(client: httpx.AsyncClient, pid: int) -> dict[str, float]:
    metrics = (await client.get("/metrics")).text
    return {"rss_mb": rss_mb(pid), "resume_memory_mb": round(gauge(metrics, "chat_resume_memory_bytes") / 2**20, 1)}


async def soak(gateway: GatewayProcess, args: argparse.Namespace) -> dict[str, Any]:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "soak"}]}
    counts = {"ok": 0, "failed": 0}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30, limits=limits) as client:
        idle = await sample(client, gateway.pid)
        deadline = time.monotonic() + args.load_s

        async def user() -> None:
            while time.monotonic() < deadline:
                try:
                    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        await response.aread()
                    counts["ok" if response.status_code == 200 else "failed"] += 1
                except httpx.HTTPError:
                    counts["failed"] += 1

        await asyncio.gather(*(user() for _ in range(args.concurrency)))
        loaded = await sample(client, gateway.pid)
        await asyncio.sleep(args.idle_s)
        rested = await sample(client, gateway.pid)
    return {
        "store": args.store,
        "concurrency": args.concurrency,
        "load_s": args.load_s,
        "idle_s": args.idle_s,
        "resume_ttl_s": args.resume_ttl_s,
        "streams": counts,
        "idle": idle,
        "after_load": loaded,
        "after_idle": rested,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--load-s", type=float, default=360)
    parser.add_argument("--idle-s", type=float, default=300)
    parser.add_argument("--resume-ttl-s", type=float, default=300)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout of the gateway to run")
    parser.add_argument("--max-seconds", type=float, default=1200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rss-soak-") as tmp:
        work = Path(tmp)
        upstream = UpstreamProcess(work, max_seconds=args.max_seconds).wait_ready()
        redis = RedisProcess(work).start() if args.store == "redis" else None
        env = {"CHAT_STREAMING__RESUME_TTL_S": str(args.resume_ttl_s), "CHAT_STREAMING__RESUME_STORE": args.store}
        if redis is not None:
            env["CHAT_REDIS__URL"] = redis.url
        toml = deployments_toml({MODEL: UPSTREAM_MODEL}, upstream.base_url)
        gateway = GatewayProcess(work, toml, env, root=args.root)
        try:
            gateway.wait_ready(90)
            result = asyncio.run(asyncio.wait_for(soak(gateway, args), args.max_seconds))
        finally:
            gateway.child.stop()
            if redis is not None:
                redis.stop()
            upstream.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
