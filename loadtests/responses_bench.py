"""What the Responses API costs beside chat completions (issue 26's figures).

    .venv/bin/python -m loadtests.responses_bench cpu [--rounds 4] [--concurrency 32,256]
    .venv/bin/python -m loadtests.responses_bench chain [--rounds 4] [--concurrency 32] [--turns 4] [--store redis]

``cpu``: one `python -m app` in front of one `loadtests.upstream`; each round runs, per concurrency,
chat completions SSE, Responses SSE (`/v1/responses`), chat completions WebSocket and the Responses
WebSocket mode (`response.create` frames, one socket per user), the same model, prompt and upstream
stream, back to back in A B B A order (a drift of the shared machine weighs on both sides), and a
direct SSE cell against the upstream for the added TTFB. It reports each cell's gateway CPU per
1000 content chunks and TTFB p50, the medians, and Responses' change against chat's per transport.

``chain``: the gateway with `responses.store = "redis"` (a private redis-server; `--store memory` for
comparison); a stored response
of ``--turns`` turns is made first (each turn naming the previous one), then each round runs
Responses SSE cells without and with `previous_response_id` naming it (A B B A). It reports the
TTFB p50 of each and the median of the rounds' paired differences: what rebuilding a conversation
from the Redis store adds.

Everything listens on 127.0.0.1; every child is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.loadgen import LoadConfig, run_load
from loadtests.processes import ACCESS_LOG, ROOT, GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml

#: A cell: its client API and transport (loadgen's --api and --mode).
CELLS = {
    "chat_sse": ("chat", "sse"),
    "responses_sse": ("responses", "sse"),
    "chat_ws": ("chat", "ws"),
    "responses_ws": ("responses", "ws"),
}
RAMP_S = 0.24  # users start over one stream of the default upstream


async def cell(
    url: str, api: str, mode: str, concurrency: int, requests: int, pid: int | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    cfg = LoadConfig(
        url=url,
        mode=mode,
        model="fast",
        api=api,
        concurrency=concurrency,
        requests=requests,
        pid=pid,
        ramp=RAMP_S,
        warmup=concurrency,
        timeout=30,
        extra_body=extra or {},
    )
    return await run_load(cfg)


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    server = summary.get("server") or {}
    return {
        "ok": summary["ok"],
        "errors": summary["errors"],
        "chunks_per_request": summary["chunks_per_request"],
        "cpu_s_per_1k_chunks": server.get("cpu_s_per_1k_chunks"),
        "ttfb_p50_ms": summary["ttfb_ms"]["p50"],
    }


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return round(statistics.median(values), 4) if values else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _change_pct(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else round((new / old - 1) * 100, 1)


def requests_for(concurrency: int, minimum: int) -> int:
    return max(minimum, 10 * concurrency)  # ten rounds per user, as run_matrix's cells


async def cpu(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="responses-bench-"))
    upstream = UpstreamProcess(workdir).wait_ready()
    gateway = GatewayProcess(
        workdir, deployments_toml({"fast": "fast"}, upstream.base_url), env=ACCESS_LOG, root=args.root
    )
    direct_url = f"http://127.0.0.1:{upstream.port}"
    out: dict[str, Any] = {}
    try:
        gateway.wait_ready()
        for c in args.concurrency:
            n = requests_for(c, args.requests)
            rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ("direct", *CELLS)}
            for r in range(args.rounds):
                rows["direct"].append(figures(await cell(direct_url, "chat", "sse", c, n, None)))
                order = list(CELLS) if r % 2 == 0 else list(reversed(CELLS))
                for name in order:
                    api, mode = CELLS[name]
                    rows[name].append(figures(await cell(gateway.base_url, api, mode, c, n, gateway.pid)))
            med = {
                name: {k: _median(cells, k) for k in ("cpu_s_per_1k_chunks", "ttfb_p50_ms")}
                for name, cells in rows.items()
            }
            direct_ttfb = med["direct"]["ttfb_p50_ms"]
            for name in CELLS:
                ttfb = med[name]["ttfb_p50_ms"]
                med[name]["added_ttfb_p50_ms"] = _diff(ttfb, direct_ttfb)
            out[f"c={c}"] = {
                "requests_per_cell": n,
                "rounds": rows,
                "median": med,
                "responses_vs_chat": {
                    mode: {
                        "cpu_change_pct": _change_pct(
                            med[f"responses_{mode}"]["cpu_s_per_1k_chunks"], med[f"chat_{mode}"]["cpu_s_per_1k_chunks"]
                        ),
                        "added_ttfb_p50_diff_ms": _diff(
                            med[f"responses_{mode}"]["ttfb_p50_ms"], med[f"chat_{mode}"]["ttfb_p50_ms"]
                        ),
                    }
                    for mode in ("sse", "ws")
                },
            }
    finally:
        gateway.stop()
        upstream.stop()
    return out


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


async def chain(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="responses-chain-"))
    redis = RedisProcess(workdir).start() if args.store == "redis" else None
    upstream = UpstreamProcess(workdir).wait_ready()
    env = {**ACCESS_LOG, "CHAT_RESPONSES__STORE": args.store}
    if redis is not None:
        env["CHAT_REDIS__URL"] = redis.url
    gateway = GatewayProcess(workdir, deployments_toml({"fast": "fast"}, upstream.base_url), env=env, root=args.root)
    rows: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    c = args.concurrency[0]
    n = requests_for(c, args.requests)
    try:
        gateway.wait_ready()
        previous: str | None = None
        for turn in range(args.turns):  # the stored conversation the "with" cells continue
            body: dict[str, Any] = {"model": "fast", "input": f"Turn {turn}: say hello."}
            if previous:
                body["previous_response_id"] = previous
            previous = str(post_json(f"{gateway.base_url}/v1/responses", body)["id"])
        extra = {"previous_response_id": previous}
        for r in range(args.rounds):
            order = ["without", "with"] if r % 2 == 0 else ["with", "without"]
            for name in order:
                summary = await cell(
                    gateway.base_url, "responses", "sse", c, n, gateway.pid, extra if name == "with" else None
                )
                rows[name].append(figures(summary))
    finally:
        gateway.stop()
        upstream.stop()
        if redis is not None:
            redis.stop()
    med = {name: {k: _median(cells, k) for k in ("cpu_s_per_1k_chunks", "ttfb_p50_ms")} for name, cells in rows.items()}
    diffs = [w["ttfb_p50_ms"] - o["ttfb_p50_ms"] for w, o in zip(rows["with"], rows["without"], strict=True)]
    return {
        "concurrency": c,
        "store": args.store,
        "requests_per_cell": n,
        "turns_stored": args.turns,
        "rounds": rows,
        "median": med,
        # The median of each round's pair (with minus without, back to back): a drift of the shared
        # machine between rounds weighs on both cells of a pair alike.
        "previous_response_id_added_ttfb_p50_ms": round(statistics.median(diffs), 3),
        "median_difference_ms": _diff(med["with"]["ttfb_p50_ms"], med["without"]["ttfb_p50_ms"]),
        "per_round_pair_diff_ms": [round(d, 3) for d in diffs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("cpu", "chain"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=640, help="at least this many per cell (10 x c otherwise)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--turns", type=int, default=4, help="chain: turns in the stored conversation")
    parser.add_argument("--store", choices=("redis", "memory"), default="redis", help="chain: responses.store")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app runs (another, to compare)")
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = [32, 256] if args.what == "cpu" else [32]
    result = asyncio.run(cpu(args) if args.what == "cpu" else chain(args))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
