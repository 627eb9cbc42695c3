"""What resumable streams cost (issue 13's closing figures), loopback only, every wait bounded.

    .venv/bin/python -m loadtests.resume_bench [--requests 1500] [--rounds 2] [--resumes 60]

One run starts a private redis-server, the fast fake upstream and four gateways (`python -m app`):
`none` (stream logs off: `resume_max_events = 0`), `memory` (the default store), and `redis` A and B
(two replicas on that Redis). Then:

1. TTFB at c=32 over SSE for none / memory / redis A, interleaved over ``--rounds`` rounds so that
   drift of the machine hits all three alike (the figures are the rounds' samples pooled);
2. resume latency, request -> first replayed event byte, sequentially: memory (same process),
   redis on the replica that ran the stream (served from its memory), redis on the other replica
   (read from Redis);
3. memory per logged stream: the memory gateway's ``chat_resume_memory_bytes`` over the streams it
   holds, its RSS against the `none` gateway's after the same load, and a tracemalloc count of a
   log of the same events in this process.

Prints one JSON document and a short human summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

from loadtests.loadgen import LoadConfig, run_load
from loadtests.processes import GatewayProcess, RedisProcess, UpstreamProcess, deployments_toml

MODELS = {"fast": "fast", "long": "fast-n60-g5"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def gauge(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def first_event_ms(host: str, port: int, sid: str, seq: int) -> float:
    """GET the resume with a raw socket: request written -> first byte of the first event read."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = (
            f"GET /v1/chat/completions/streams/{sid} HTTP/1.1\r\nHost: {host}\r\n"
            f"Last-Event-ID: {sid}:{seq}\r\nConnection: close\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        writer.write(request)
        await writer.drain()
        buffer = b""
        async with asyncio.timeout(10):
            while b"\nid: " not in buffer and b"\r\n\r\nid: " not in buffer:
                data = await reader.read(65536)
                if not data:
                    raise RuntimeError(f"no event: {buffer[:300]!r}")
                buffer += data
        return (time.perf_counter() - started) * 1000
    finally:
        writer.transport.abort()


async def start_stream(base_url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        body = {"model": "long", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        response = await http.post(f"{base_url}/v1/chat/completions", json=body)
        assert response.status_code == 200 and response.content.endswith(b"data: [DONE]\n\n"), response.text[:200]
        return response.headers["x-stream-id"]


async def resume_latency(origin: GatewayProcess, reader: GatewayProcess, n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        sid = await start_stream(origin.base_url)
        await asyncio.sleep(0.05)  # the Redis flusher's last batch
        out.append(await first_event_ms("127.0.0.1", reader.port, sid, 10))
    return out


def tracemalloc_per_stream(events_per_stream: int, chunk_bytes: int, streams: int = 1000) -> float:
    from app.domain.chunks import Chunk
    from app.domain.events import StreamEvent
    from app.resume.memory import MemoryResumeStore

    store = MemoryResumeStore(300, 10_000, 1 << 40)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(streams):
        log = store.begin(f"{i:032x}", "anonymous")
        for seq in range(1, events_per_stream):
            log.append(StreamEvent(seq, Chunk(raw=bytes(chunk_bytes))))
        log.append(StreamEvent(events_per_stream))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / streams


def summary(cell: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sum(c["ok"] for c in cell)
    errors = sum(c["errors"] for c in cell)
    # Pool the per-round percentiles by weighting: report the median of round p50s and the max p95.
    p50 = sorted(c["ttfb_ms"]["p50"] for c in cell)[len(cell) // 2]
    p95 = max(c["ttfb_ms"]["p95"] for c in cell)
    return {"ok": ok, "errors": errors, "ttfb_p50_ms": p50, "ttfb_p95_ms": p95, "rounds": [c["ttfb_ms"] for c in cell]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--resumes", type=int, default=60)
    parser.add_argument(
        "--grace", action="store_true", help="also a memory gateway with detach_grace_s = 30 (streams are followed)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    redis = RedisProcess(workdir).start()
    upstream = UpstreamProcess(workdir, max_seconds=900).wait_ready()
    config = deployments_toml(MODELS, upstream.base_url)
    common = {"CHAT_STREAMING__STATUS_WINDOW_S": "0"}
    gateways = {
        "none": GatewayProcess(workdir, config, {**common, "CHAT_STREAMING__RESUME_MAX_EVENTS": "0"}, "none"),
        "memory": GatewayProcess(workdir, config, common, "memory"),
        "redis": GatewayProcess(
            workdir, config, {**common, "CHAT_STREAMING__RESUME_STORE": "redis", "CHAT_REDIS__URL": redis.url}, "redis"
        ),
        "redis_b": GatewayProcess(
            workdir,
            config,
            {**common, "CHAT_STREAMING__RESUME_STORE": "redis", "CHAT_REDIS__URL": redis.url},
            "redis_b",
        ),
    }
    if args.grace:
        grace_env = {**common, "CHAT_STREAMING__DETACH_GRACE_S": "30"}
        gateways["memory_grace"] = GatewayProcess(workdir, config, grace_env, "memory_grace")
    result: dict[str, Any] = {"requests_per_cell": args.requests, "rounds": args.rounds, "concurrency": 32}
    try:
        for g in gateways.values():
            g.wait_ready(90)
        names = ["none", "memory", "redis"] + (["memory_grace"] if args.grace else [])
        for name in names:  # warm up every path
            await run_load(
                LoadConfig(url=gateways[name].base_url, mode="sse", model="fast", concurrency=8, requests=200)
            )
        rss_before = {name: rss_kib(gateways[name].pid) for name in ("none", "memory")}
        cells: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in cells:
                g = gateways[name]
                cfg = LoadConfig(
                    url=g.base_url,
                    mode="sse",
                    model="fast",
                    concurrency=32,
                    requests=args.requests,
                    duration=60,
                    timeout=20,
                    pid=g.pid,
                    upstream_pid=upstream.proc.pid,
                    ramp=0.5,
                )
                cells[name].append(await run_load(cfg))
        result["ttfb_c32"] = {name: summary(cell) for name, cell in cells.items()}
        memory = gateways["memory"]
        held_bytes = gauge(memory.base_url, "chat_resume_memory_bytes")
        streams_logged = 200 + args.rounds * args.requests
        rss_after = {name: rss_kib(gateways[name].pid) for name in ("none", "memory")}
        result["memory_per_stream"] = {
            "streams_held": streams_logged,
            "gauge_bytes": held_bytes,
            "gauge_bytes_per_stream": round(held_bytes / streams_logged, 1),
            "rss_kib": {"before": rss_before, "after": rss_after},
            "rss_growth_vs_none_bytes_per_stream": round(
                ((rss_after["memory"] - rss_before["memory"]) - (rss_after["none"] - rss_before["none"]))
                * 1024
                / streams_logged,
                1,
            ),
            "tracemalloc_bytes_per_stream_22_events_of_180_bytes": round(tracemalloc_per_stream(22, 180), 1),
        }
        latency = {
            "memory": await resume_latency(memory, memory, args.resumes),
            "redis_same_replica": await resume_latency(gateways["redis"], gateways["redis"], args.resumes),
            "redis_other_replica": await resume_latency(gateways["redis"], gateways["redis_b"], args.resumes),
        }
        result["resume_first_event_ms"] = {
            name: {"p50": round(pct(v, 50), 3), "p95": round(pct(v, 95), 3), "n": len(v)} for name, v in latency.items()
        }
    finally:
        for g in gateways.values():
            g.stop()
        upstream.stop()
        redis.stop()
    print(json.dumps(result, indent=2))
    t = result["ttfb_c32"]
    print(
        "TTFB c=32 p50/p95 ms: "
        + ", ".join(f"{k} {v['ttfb_p50_ms']:.2f}/{v['ttfb_p95_ms']:.2f} (errors {v['errors']})" for k, v in t.items())
    )
    print(
        "resume first event p50/p95 ms: "
        + ", ".join(f"{k} {v['p50']:.2f}/{v['p95']:.2f}" for k, v in result["resume_first_event_ms"].items())
    )
    m = result["memory_per_stream"]
    traced = m["tracemalloc_bytes_per_stream_22_events_of_180_bytes"]
    print(
        f"memory per logged stream: gauge {m['gauge_bytes_per_stream']} B, RSS vs none "
        f"{m['rss_growth_vs_none_bytes_per_stream']} B, tracemalloc {traced} B"
    )


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    asyncio.run(main())
