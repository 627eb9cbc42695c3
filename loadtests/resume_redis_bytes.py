"""What one stream costs in the Redis resume store, and what the gateway's memory keeps of it.

``python -m loadtests.resume_redis_bytes --streams 2000 --chunks 20`` runs the fast fake upstream, a
private redis-server and ``python -m app`` with ``resume_store = "redis"`` (all on 127.0.0.1), sends
``--streams`` SSE requests of ``--chunks`` content chunks (``--concurrency`` at a time), and prints
one JSON line: Redis ``used_memory`` added per stream, ``MEMORY USAGE`` of one stream's keys, the
keys held, and the gateway's ``chat_resume_memory_bytes`` and RSS once the streams have ended.
Bounded by a per-request timeout and ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.processes import GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml

MODEL = "resumable"


def redis_command(port: int, *args: str) -> bytes:
    """One command over a raw socket (no client library needed); the raw reply."""
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.settimeout(2)
        data = b""
        while True:
            try:
                part = sock.recv(1 << 16)
            except TimeoutError:
                break
            if not part:
                break
            data += part
            if data.endswith(b"\r\n") and (not data.startswith(b"$") or data.count(b"\r\n") >= 2):
                break
    return data


def used_memory(port: int) -> int:
    info = redis_command(port, "INFO", "memory").decode()
    return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("used_memory:")))


def reply_int(data: bytes) -> int:
    return int(data[1:].split(b"\r\n")[0]) if data.startswith(b":") else 0


def gauge(text: str, name: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(float(line.split()[-1]) for line in lines)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="resume-bytes-") as tmp:
        work = Path(tmp)
        upstream = UpstreamProcess(work, max_seconds=args.max_seconds).wait_ready()
        redis = RedisProcess(work).start()
        env = {"CHAT_REDIS__URL": redis.url, "CHAT_STREAMING__RESUME_STORE": "redis"}
        toml = deployments_toml({MODEL: f"fast-n{args.chunks}-g1-f1"}, upstream.base_url)
        gateway = GatewayProcess(work, toml, env)
        try:
            gateway.wait_ready(90)
            base = used_memory(redis.port)
            body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x" * 40}]}
            ids: list[str] = []
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
                rss_idle = rss_mb(gateway.pid)
                queue = iter(range(args.streams))

                async def user() -> None:
                    for _ in queue:
                        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                            text = (await response.aread()).decode()
                        ids.append(text.split("id: ", 1)[1].split(":", 1)[0])

                await asyncio.gather(*(user() for _ in range(args.concurrency)))
                await asyncio.sleep(1.5)  # the flusher's last round trip, and one memory sweep
                metrics = (await client.get("/metrics")).text
            added = used_memory(redis.port) - base
            one = ids[len(ids) // 2]
            key_bytes = sum(
                reply_int(redis_command(redis.port, "MEMORY", "USAGE", key, "SAMPLES", "0"))
                for key in (f"chat:resume:{one}", f"chat:resume:{one}:meta")
            )
            keys = reply_int(redis_command(redis.port, "DBSIZE"))
            return {
                "streams": len(ids),
                "chunks": args.chunks,
                "redis_used_memory_added_per_stream": round(added / max(1, len(ids))),
                "redis_memory_usage_one_stream_keys": key_bytes,
                "redis_keys": keys,
                "gateway_resume_memory_bytes_after": gauge(metrics, "chat_resume_memory_bytes"),
                "gateway_rss_mb_idle": rss_idle,
                "gateway_rss_mb_after": rss_mb(gateway.pid),
            }
        finally:
            gateway.child.stop()
            redis.stop()
            upstream.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = asyncio.run(asyncio.wait_for(run(args), args.max_seconds))
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
