"""What the gateway adds to an embeddings call (issue 27's figure), against the upstream directly.

    .venv/bin/python -m loadtests.embeddings_bench [--rounds 4] [--requests 640] [--concurrency 32] [--floor]

One `python -m app` (the matrix's configuration, its access line at info: `run_matrix.gateway_toml`, whose `embed`
deployment is served by the upstream's `/v1/embeddings` over the relay) in front of one
`loadtests.upstream`; each round runs a direct cell (loadgen against the upstream) and a gateway
cell (the same requests through the gateway), JSON, one string input, `encoding_format: float`,
back to back in A B B A order, so that a drift of the shared machine weighs on both. The report
gives each round's total p50 and the gateway's CPU per request, and the medians with the gateway's
added latency. ``--floor`` adds a third cell per round: ``asgi_floor.py`` (the same server and
upstream client with no gateway in between), so the report also says what the gateway's own
request path adds above that floor. Everything listens on 127.0.0.1; every child is killed on exit.
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
from loadtests.processes import ACCESS_LOG, PY, GatewayProcess, ReadyProcess, UpstreamProcess, free_port
from loadtests.run_matrix import EMBED, gateway_toml


async def cell(url: str, pid: int | None, concurrency: int, requests: int) -> dict[str, Any]:
    cfg = LoadConfig(
        url=url,
        mode="json",
        api="embeddings",
        model=EMBED,
        concurrency=concurrency,
        requests=requests,
        pid=pid,
        ramp=0.24,
        warmup=concurrency,
        timeout=30,
    )
    summary = await run_load(cfg)
    return {
        "ok": summary["ok"],
        "errors": summary["errors"],
        "total_p50_ms": summary["total_ms"]["p50"],
        "cpu_ms_per_request": (summary.get("server") or {}).get("cpu_ms_per_request"),
        "others_cores": (summary.get("host") or {}).get("others_cores"),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="embeddings-bench-"))
    upstream = UpstreamProcess(workdir, extra=["--embed-ms", str(args.embed_ms)]).wait_ready()
    # The gateway's own port comes from its environment (GatewayProcess), over the TOML's.
    gateway = GatewayProcess(
        workdir, gateway_toml(free_port(), {"stream": upstream.port}, full_path=False), env=ACCESS_LOG
    )
    rows: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    floor: ReadyProcess | None = None
    try:
        gateway.wait_ready()
        direct_url = f"http://127.0.0.1:{upstream.port}"
        targets: dict[str, tuple[str, int | None]] = {
            "direct": (direct_url, None),
            "gateway": (gateway.base_url, gateway.pid),
        }
        if args.floor:
            argv = [PY, "-m", "loadtests.asgi_floor", "--port", "0", "--upstream", direct_url]
            floor = ReadyProcess(argv, workdir / "floor.log").wait_ready()
            targets["floor"] = (f"http://127.0.0.1:{floor.port}", floor.pid)
            rows["floor"] = []
        names = list(targets)
        for r in range(args.rounds):
            for target in names if r % 2 == 0 else names[::-1]:
                url, pid = targets[target]
                rows[target].append(await cell(url, pid, args.concurrency, args.requests))
    finally:
        if floor is not None:
            floor.stop()
        gateway.stop()
        upstream.stop()
    medians = {name: statistics.median(row["total_p50_ms"] for row in cells) for name, cells in rows.items()}
    report: dict[str, Any] = {
        "concurrency": args.concurrency,
        "requests_per_cell": args.requests,
        "embed_ms": args.embed_ms,
        "rounds": rows,
        "median_total_p50_ms": medians,
        "added_p50_ms": round(medians["gateway"] - medians["direct"], 3),
        "gateway_cpu_ms_per_request": statistics.median(row["cpu_ms_per_request"] for row in rows["gateway"]),
    }
    if "floor" in rows:
        report["floor_added_p50_ms"] = round(medians["floor"] - medians["direct"], 3)
        report["floor_cpu_ms_per_request"] = statistics.median(row["cpu_ms_per_request"] for row in rows["floor"])
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--embed-ms", type=float, default=50.0, help="the upstream's delay before an answer")
    parser.add_argument("--floor", action="store_true", help="also run asgi_floor.py's cells (the floor)")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
