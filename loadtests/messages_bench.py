"""What the Messages API adapter costs beside chat completions (issue 27's figures).

    .venv/bin/python -m loadtests.messages_bench [--rounds 4] [--requests 640] [--concurrency 32]

One `python -m app` (the matrix's configuration: limits on, the access line at info) in front of
one `loadtests.upstream`; each round runs a chat completions SSE
cell and a Messages SSE cell (`/v1/messages`, the same model, prompt and upstream stream) back to
back, in A B B A order, so that a drift of the shared machine weighs on both. The report gives
each round's gateway CPU per 1000 content chunks and TTFB p50, and the medians with the Messages
cells' change against chat's. Everything listens on 127.0.0.1; every child is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from loadtests.loadgen import LoadConfig, run_load
from loadtests.processes import ACCESS_LOG, GatewayProcess, UpstreamProcess, free_port
from loadtests.run_matrix import gateway_toml


async def cell(gateway: GatewayProcess, api: str, concurrency: int, requests: int) -> dict[str, Any]:
    cfg = LoadConfig(
        url=gateway.base_url,
        mode="sse",
        model="fast",
        api=api,
        concurrency=concurrency,
        requests=requests,
        pid=gateway.pid,
        ramp=0.24,
        warmup=concurrency,
        timeout=30,
    )
    return await run_load(cfg)


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    server = summary["server"]
    return {
        "ok": summary["ok"],
        "errors": summary["errors"],
        "chunks_per_request": summary["chunks_per_request"],
        "cpu_s_per_1k_chunks": server["cpu_s_per_1k_chunks"],
        "ttfb_p50_ms": summary["ttfb_ms"]["p50"],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="messages-bench-"))
    upstream = UpstreamProcess(workdir).wait_ready()
    # The matrix's configuration (limits on, the access line at info): what a deployment does per request.
    gateway = GatewayProcess(
        workdir, gateway_toml(free_port(), {"stream": upstream.port}, full_path=False), env=ACCESS_LOG
    )
    rows: dict[str, list[dict[str, Any]]] = {"chat": [], "messages": []}
    try:
        gateway.wait_ready()
        for r in range(args.rounds):
            order = ["chat", "messages"] if r % 2 == 0 else ["messages", "chat"]
            for api in order:
                rows[api].append(figures(await cell(gateway, api, args.concurrency, args.requests)))
    finally:
        gateway.stop()
        upstream.stop()
    med = {
        api: {k: statistics.median(row[k] for row in cells) for k in ("cpu_s_per_1k_chunks", "ttfb_p50_ms")}
        for api, cells in rows.items()
    }
    return {
        "concurrency": args.concurrency,
        "requests_per_cell": args.requests,
        "rounds": rows,
        "median": med,
        "messages_cpu_change_pct": round(
            (med["messages"]["cpu_s_per_1k_chunks"] / med["chat"]["cpu_s_per_1k_chunks"] - 1) * 100, 1
        ),
        "messages_added_ttfb_p50_ms": round(med["messages"]["ttfb_p50_ms"] - med["chat"]["ttfb_p50_ms"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=32)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
