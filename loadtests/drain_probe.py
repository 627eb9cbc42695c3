"""Does a drain answer every connection? Clients that reuse kept-alive connections through a SIGTERM.

``python -m loadtests.drain_probe`` runs the fast fake upstream and ``python -m app``
(``server.shutdown_delay_s = --delay-s``, ``server.drain_s = 10``), starts ``--sse`` SSE workers and
``--json`` JSON workers, each on one kept-alive connection of its own, sending requests back to back,
and sends SIGTERM after ``--before-s``. A worker stops when its request is refused at connect (the
listener has closed: the client knows nothing was sent) or answered 503. One JSON line counting
the requests by outcome: ``ok``, ``shutting_down`` (503 ``server_shutting_down``), ``refused``,
and ``no_answer``: sent on an open connection that then closed without a response (what API.md 1.4
rules out), plus whether every response after the listener closed said ``Connection: close``.
Bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.processes import ROOT, GatewayProcess, UpstreamProcess, deployments_toml

MODEL = "paced"
UPSTREAM_MODEL = "paced-n20-g50-f5"  # ~1 s streams: some always running when the listener closes


async def worker(base_url: str, stream: bool, counts: dict[str, int], closed_at: list[float]) -> None:
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        while True:
            sent = time.monotonic()
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    data = await response.aread()
            except httpx.ConnectError:
                counts["refused"] += 1
                return
            except (httpx.RemoteProtocolError, httpx.ReadError):
                counts["no_answer"] += 1
                return
            if closed_at and sent > closed_at[0]:
                counts["after_close"] += 1
                if response.headers.get("connection", "").lower() != "close":
                    counts["after_close_without_connection_close"] += 1
            if response.status_code == 503 and b"server_shutting_down" in data:
                counts["shutting_down"] += 1
                return
            counts["ok" if response.status_code == 200 else "other"] += 1


async def watch_listener(port: int, closed_at: list[float]) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        except OSError:
            closed_at.append(time.monotonic())
            return
        await asyncio.sleep(0.02)


async def probe(gateway: GatewayProcess, args: argparse.Namespace) -> dict[str, Any]:
    counts = dict.fromkeys(
        ["ok", "shutting_down", "refused", "no_answer", "other", "after_close", "after_close_without_connection_close"],
        0,
    )
    closed_at: list[float] = []
    workers = [
        asyncio.create_task(worker(gateway.base_url, i < args.sse, counts, closed_at))
        for i in range(args.sse + args.json)
    ]
    await asyncio.sleep(args.before_s)
    gateway.child.signal(signal.SIGTERM)
    await asyncio.sleep(args.delay_s * 0.8)
    await watch_listener(gateway.port, closed_at)
    await asyncio.gather(*workers)
    exit_code = await asyncio.to_thread(gateway.child.proc.wait, 30)
    return {"sse_workers": args.sse, "json_workers": args.json, **counts, "exit_code": exit_code}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sse", type=int, default=12)
    parser.add_argument("--json", type=int, default=4)
    parser.add_argument("--before-s", type=float, default=3.0)
    parser.add_argument("--delay-s", type=float, default=1.0, help="server.shutdown_delay_s")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout of the gateway to run")
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="drain-probe-") as tmp:
        work = Path(tmp)
        upstream = UpstreamProcess(work, max_seconds=args.max_seconds + 30).wait_ready()
        env = {"CHAT_SERVER__SHUTDOWN_DELAY_S": str(args.delay_s), "CHAT_SERVER__DRAIN_S": "10"}
        toml = deployments_toml({MODEL: UPSTREAM_MODEL}, upstream.base_url)
        gateway = GatewayProcess(work, toml, env, root=args.root)
        try:
            gateway.wait_ready(90)
            result = asyncio.run(asyncio.wait_for(probe(gateway, args), args.max_seconds))
        finally:
            gateway.child.stop()
            upstream.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
