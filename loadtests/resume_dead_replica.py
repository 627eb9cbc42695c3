"""What a resumer hears when the replica running its stream dies.

``python -m loadtests.resume_dead_replica`` runs the fast fake upstream, a private redis-server and
two ``python -m app`` replicas (A and B) with ``resume_store = "redis"`` and the default
``heartbeat_s``, all on 127.0.0.1. A stream whose chunks come ``--gap-s`` apart starts on A; its
client reads one event and leaves (the detach grace keeps it going); a resume of it on B follows it
through ``--follow-s`` of A's silences, then A is SIGKILLed. One JSON line: the longest silence the
resumer saw before and after the kill, the heartbeats, how long after the kill its error came (and
which), and how long a later resume on B took to end. Bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.processes import ROOT, GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml

MODEL = "silent"


def gaps(times: list[float]) -> float:
    return round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 2)


async def probe(a: GatewayProcess, b: GatewayProcess, args: argparse.Namespace) -> dict[str, Any]:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=args.max_seconds) as http:
        async with http.stream("POST", f"{a.base_url}/v1/chat/completions", json=body) as r:
            sid = r.headers["x-stream-id"]
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    break
        url = f"{b.base_url}/v1/chat/completions/streams/{sid}"
        lines: list[tuple[float, str]] = []
        opened = time.monotonic()
        killed_at = 0.0
        async with http.stream("GET", url, headers={"Last-Event-ID": f"{sid}:1"}) as resumed:
            async for line in resumed.aiter_lines():
                now = time.monotonic()
                if line:
                    lines.append((now, line))
                if not killed_at and now - opened >= args.follow_s:
                    a.child.signal(signal.SIGKILL)
                    killed_at = now
        ended_at = time.monotonic()
        if not killed_at:  # the stream ended on its own before the kill: nothing to measure
            killed_at = ended_at
        started = time.monotonic()
        later = await http.get(url, headers={"Last-Event-ID": f"{sid}:1"})
        later_s = time.monotonic() - started
    before = [opened] + [t for t, _ in lines if t < killed_at]
    after = [killed_at] + [t for t, _ in lines if t >= killed_at]
    error = next((text for _, text in reversed(lines) if text.startswith("data: {")), None)
    return {
        "heartbeat_s": args.heartbeat_s,
        "gap_s": args.gap_s,
        "keep_alives": sum(1 for _, text in lines if text == ": keep-alive"),
        "longest_silence_before_kill_s": gaps(before),
        "longest_silence_after_kill_s": gaps(after),
        "error_after_kill_s": round(ended_at - killed_at, 2),
        "error": json.loads(error.removeprefix("data: "))["error"]["code"] if error else None,
        "later_resume_s": round(later_s, 3),
        "later_resume_ends_with_error": b"event: error" in later.content,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dead-replica-") as tmp:
        work = Path(tmp)
        upstream = UpstreamProcess(work, max_seconds=args.max_seconds + 60).wait_ready()
        redis = RedisProcess(work).start()
        gap_ms = int(args.gap_s * 1000)
        toml = deployments_toml({MODEL: f"paced-n100-f1-g{gap_ms}"}, upstream.base_url)
        env = {
            "CHAT_REDIS__URL": redis.url,
            "CHAT_STREAMING__RESUME_STORE": "redis",
            "CHAT_STREAMING__DETACH_GRACE_S": "300",
            "CHAT_STREAMING__IDLE_TIMEOUT_S": str(args.gap_s * 4),
            "CHAT_STREAMING__HEARTBEAT_S": str(args.heartbeat_s),
            "CHAT_SERVER__LOG_LEVEL": "info",
        }
        a = GatewayProcess(work, toml, env, name="a", root=args.root)
        b = GatewayProcess(work, toml, env, name="b", root=args.root)
        try:
            a.wait_ready(90)
            b.wait_ready(90)
            return await asyncio.wait_for(probe(a, b, args), args.max_seconds)
        finally:
            a.child.stop()
            b.child.stop()
            redis.stop()
            upstream.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap-s", type=float, default=20.0, help="silence between two chunks on A")
    parser.add_argument("--follow-s", type=float, default=25.0, help="how long B's resumer follows before the kill")
    parser.add_argument("--heartbeat-s", type=float, default=15.0)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout of the gateway to run")
    parser.add_argument("--max-seconds", type=float, default=180)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
