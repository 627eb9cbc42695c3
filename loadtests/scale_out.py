"""Scale-out without containers: two gateway processes and one Redis on loopback, shared state shown.

``python -m loadtests.scale_out`` starts the fast fake upstream, one private redis-server and two
gateways (``python -m app``, configured by ``CHAT_*`` variables: the Redis cache on, the same
deployments), all on 127.0.0.1, then shows that the replicas share what lives in Redis:

- **cache**: each prompt is asked of one replica (a miss: one upstream call), then of the other,
  which answers from the shared cache (``X-Cache: HIT``) without calling the upstream. Half the
  prompts go A then B, half B then A; half are JSON, half SSE (a stream's answer replays as a
  stream). The upstream's own call counter confirms that only the first ask of each prompt reached it.

One shared rate limit and a stream resumed on the other replica are the next parts of this
scenario; they land with the rate-limit and resume-store work.

Each prompt's second ask waits until the first answer's entry is in Redis (the answer goes out
before its write lands), then goes to the other replica once: a miss there is a failure, never
retried, so replicas with a cache each cannot pass. Prints one JSON summary (and exits 1 if the
replicas did not share the cache). Bounded: a prompt count, a per-request timeout, a bounded wait
for each write to reach Redis, and ``--max-seconds``.
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

from loadtests.processes import GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml

MODEL = "fast"
UPSTREAM_MODEL = "fast-f5-n5-g2"
#: A replica answers before its write of the answer has reached Redis: wait up to this long for
#: the write to show in Redis before asking the other replica (once).
WRITE_VISIBLE_S = 2.0


async def ask(client: httpx.AsyncClient, base_url: str, prompt: str, stream: bool) -> tuple[str, str]:
    """(X-Cache, content) of one chat request."""
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    url = base_url + "/v1/chat/completions"
    if not stream:
        response = await client.post(url, json=body)
        response.raise_for_status()
        return response.headers["x-cache"], response.json()["choices"][0]["message"]["content"]
    parts = []
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"]
                if delta:
                    parts.append(delta[0]["delta"].get("content") or "")
        return response.headers["x-cache"], "".join(parts)


async def upstream_calls(client: httpx.AsyncClient, upstream: UpstreamProcess) -> int:
    """Chat calls the upstream has answered, to the end or cut (its other routes are not counted)."""
    stats = (await client.get(f"http://127.0.0.1:{upstream.port}/stats")).json()
    return int(stats["completed"]) + int(stats["cancelled"])


async def redis_keys(redis_port: int) -> int:
    """How many keys the run's private Redis holds: only the replicas' cache writes go there."""
    reader, writer = await asyncio.open_connection("127.0.0.1", redis_port)
    try:
        writer.write(b"DBSIZE\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2.0)
    finally:
        writer.close()
    if not line.startswith(b":"):
        raise RuntimeError(f"DBSIZE answered {line!r}")
    return int(line[1:])


async def write_landed(redis_port: int, keys_before: int) -> float | None:
    """Seconds until Redis holds one more key than ``keys_before``; None if it never did (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < WRITE_VISIBLE_S:
        if await redis_keys(redis_port) > keys_before:
            return time.monotonic() - started
        await asyncio.sleep(0.002)
    return None


async def shared_cache(replicas: list[str], upstream: UpstreamProcess, redis_port: int, prompts: int) -> dict[str, Any]:
    """Each prompt: ask one replica, wait until its answer's entry is in Redis, ask the other one
    once. The other replica answers from Redis only if the replicas really share it: with a cache
    of their own each, its one ask is a miss and one more upstream call."""
    async with httpx.AsyncClient(timeout=10) as client:
        calls_before = await upstream_calls(client, upstream)
        first_misses = other_hits = mismatched = landed = 0
        waits: list[float] = []
        run = time.time_ns()
        for i in range(prompts):
            first, other = (replicas[0], replicas[1]) if i % 2 == 0 else (replicas[1], replicas[0])
            stream = i % 4 >= 2
            prompt = f"scale-out {run} prompt {i}"
            keys_before = await redis_keys(redis_port)
            status, content = await ask(client, first, prompt, stream)
            first_misses += status == "MISS"
            waited = await write_landed(redis_port, keys_before)
            if waited is not None:
                landed += 1
                waits.append(waited)
            status, replayed = await ask(client, other, prompt, stream)
            if status == "HIT":
                other_hits += 1
                mismatched += replayed != content
        calls = await upstream_calls(client, upstream) - calls_before
    waits.sort()
    return {
        "prompts": prompts,
        "first_asks_missed": first_misses,
        "writes_seen_in_redis": landed,
        "other_replica_hits": other_hits,
        "replayed_content_differs": mismatched,
        "upstream_calls": calls,
        "write_visible_after_ms": {
            "p50": round(waits[len(waits) // 2] * 1000, 1) if waits else None,
            "max": round(waits[-1] * 1000, 1) if waits else None,
        },
    }


def shared(cache: dict[str, Any], prompts: int) -> bool:
    """Every prompt missed once, landed in Redis once and hit on the other replica, with one
    upstream call each and the same content replayed."""
    counts = ("first_asks_missed", "writes_seen_in_redis", "other_replica_hits", "upstream_calls")
    return all(cache[name] == prompts for name in counts) and cache["replayed_content_differs"] == 0


def run(prompts: int, max_seconds: float, workdir: Path) -> dict[str, Any]:
    upstream = UpstreamProcess(workdir, max_seconds=max_seconds + 30).wait_ready()
    redis = RedisProcess(workdir).start()
    env = {
        "CHAT_CACHE__ENABLED": "true",
        "CHAT_CACHE__BACKEND": "redis",
        "CHAT_CACHE__REDIS_URL": redis.url,
        "CHAT_STREAMING__STATUS_WINDOW_S": "0",
    }
    config = deployments_toml({MODEL: UPSTREAM_MODEL}, upstream.base_url)
    gateways = [GatewayProcess(workdir, config, env, name=f"gateway-{n}") for n in ("a", "b")]
    try:
        started = time.monotonic()
        for gateway in gateways:
            gateway.wait_ready(timeout=max_seconds)
        startup_s = time.monotonic() - started
        scenario = shared_cache([g.base_url for g in gateways], upstream, redis.port, prompts)
        cache = asyncio.run(asyncio.wait_for(scenario, max_seconds))
    finally:
        for gateway in gateways:
            gateway.stop()
        redis.stop()
        upstream.stop()
    return {
        "ok": shared(cache, prompts),
        "replicas": [{"name": g.name, "pid": g.pid, "url": g.base_url} for g in gateways],
        "redis": redis.url,
        "startup_s": round(startup_s, 2),
        "cache": cache,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40, help="distinct prompts, each asked of both replicas")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="start-up and the run each stop by then")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        result = run(args.prompts, args.max_seconds, Path(tmp))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
