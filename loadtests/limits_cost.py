"""What gateway keys' limits cost and how exact a shared limit is (issue 14's closing figures).

    .venv/bin/python -m loadtests.limits_cost [--rounds 5] [--requests 640] [--concurrency 32]

1. Admission cost: three `python -m app` gateways on loopback in front of one `loadtests.upstream`:
   limits off (no keys), limits on in memory, limits on in Redis (a private redis-server). The key has
   requests, tokens and stream limits far above the load, so every request runs the whole admission
   (check + count + lease + settlement) and none is refused. Each round runs one SSE cell per gateway
   (`loadtests.loadgen`, its own process) in turn, so that the three share the machine's noise; the
   report gives each round's TTFB p50 and the median over rounds, and the added p50 against "off".
2. The admission alone, in this process: 32 tasks admitting and settling against the memory and the
   Redis backend (latency per admission, CPU per admission + settlement), no HTTP around it.
3. Exactness: two replicas on the Redis, a key allowing N requests a minute, 3N requests sent at
   once, half to each replica; accepted vs N, once per trial (a fresh key name per trial).
Everything listens on 127.0.0.1; every child is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RedisServer

KEY = "sk-limits-cost-0123456789"
TRIAL_KEY = "sk-limits-trial-0123456789"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_toml(upstream: str, limits: str, redis_url: str, trials: int, trial_rpm: int) -> str:
    text = (
        '[server]\nlog_level = "warning"\n\n[streaming]\nstatus_window_s = 0\n\n[websocket]\nmax_inflight = 4096\n\n'
        f'[[models.deployments]]\nname = "fast"\nlitellm_model = "openai/fast"\napi_base = "{upstream}/v1"\n'
        # Priced, so that admission reserves the call's estimated cost against the key's budget.
        "info = { input_cost_per_mtok = 1.0, output_cost_per_mtok = 2.0 }\n\n"
    )
    if limits == "off":
        return text
    text += f'[rate_limit]\nbackend = "{limits}"\n\n[redis]\nurl = "{redis_url}"\n\n'
    big = (
        "requests_per_minute = 1000000\ntokens_per_minute = 1000000000\nconcurrent_streams = 100000\n"
        'budget_usd = 1000000000.0\nbudget_window = "total"\n'
    )
    text += f'[[keys]]\nname = "bench"\nkey_env = "BENCH_KEY"\n{big}\n'
    for i in range(trials):
        digest = _sha(f"{TRIAL_KEY}-{i}")
        text += f'[[keys]]\nname = "trial{i}"\nkey_sha256 = "{digest}"\nrequests_per_minute = {trial_rpm}\n\n'
    return text


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


class Children:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="limits-cost-"))

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def gateway(self, name: str, toml: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        config = self.tmp / f"{name}.toml"
        config.write_text(toml)
        env = {"CHAT_CONFIG": str(config), "CHAT_SERVER__PORT": str(port), "BENCH_KEY": KEY}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        proc = self.spawn(name, [sys.executable, "-m", "app"], env)
        return f"http://127.0.0.1:{port}", proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited")
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout} s")


def cell(url: str, pid: int, concurrency: int, requests: int, keyed: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", "loadtests.loadgen", "--url", url, "--mode", "sse", "--model", "fast"]
    argv += ["--concurrency", str(concurrency), "--requests", str(requests), "--duration", "60", "--timeout", "20"]
    argv += ["--pid", str(pid), "--include-usage"]
    if keyed:
        argv += ["--header", f"Authorization: Bearer {KEY}"]
    out = subprocess.run(argv, capture_output=True, timeout=180, check=True).stdout.decode()
    summary: dict[str, Any] = json.loads(out.splitlines()[0])
    return summary


async def exactness(urls: list[str], trial: int, rpm: int) -> int:
    headers = {"Authorization": f"Bearer {TRIAL_KEY}-{trial}"}
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    clients = [httpx.AsyncClient(base_url=u, timeout=30, limits=httpx.Limits(max_connections=32)) for u in urls]
    try:
        calls = [clients[i % 2].post("/v1/chat/completions", json=body, headers=headers) for i in range(3 * rpm)]
        return sum(r.status_code == 200 for r in await asyncio.gather(*calls))
    finally:
        for c in clients:
            await c.aclose()


async def admission_alone(backend: Any, concurrency: int = 32, per_task: int = 200) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, CPU ms) per admission + settlement, ``concurrency`` tasks each pausing 5 ms."""
    from app.limits.backend import Ask, Settlement

    latencies: list[float] = []

    async def user(u: int) -> None:
        for i in range(per_task):
            now = time.time()
            lease = f"{u}-{i}"
            ask = Ask(
                f"bench{u % 4}",
                requests_per_minute=10**9,
                tokens_per_minute=10**9,
                concurrent_streams=10**6,
                budget_usd=1e9,
                budget_window_id="total",
                tokens=10,
                lease_id=lease,
                minute=int(now // 60),
                now=now,
                reserve_usd=0.001,
                reserve_tokens=100,
            )
            started = time.perf_counter()
            await backend.admit(ask)
            latencies.append(time.perf_counter() - started)
            backend.settle(
                Settlement(
                    ask.bucket, lease_id=lease, minute=ask.minute, tokens=5, budget_window_id="total", spend=1e-4
                )
            )
            await asyncio.sleep(0.005)

    cpu0 = time.process_time()
    await asyncio.gather(*(user(u) for u in range(concurrency)))
    cpu = (time.process_time() - cpu0) / len(latencies) * 1000
    latencies.sort()
    return latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.95)] * 1000, cpu


async def admission_report(redis_url: str) -> None:
    from app.limits.memory import MemoryBackend
    from app.limits.redis_backend import RedisBackend

    print("\nThe admission alone (in-process, 32 concurrent tasks, uvloop):")
    for name, backend in (
        ("memory", MemoryBackend()),
        ("redis", RedisBackend(redis_url, lease_ttl_s=30, op_timeout_s=1)),
    ):
        await admission_alone(backend, per_task=20)  # warm-up: connection, script load
        p50, p95, cpu = await admission_alone(backend)
        print(f"  {name:<6} p50 {p50:.3f} ms  p95 {p95:.3f} ms  CPU {cpu:.3f} ms per admission + settlement")
        await backend.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=640)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--trial-rpm", type=int, default=200)
    args = p.parse_args(argv)
    children = Children()
    redis = RedisServer().start()
    try:
        up = children.spawn("upstream", [sys.executable, "-m", "loadtests.upstream", "--port", "0"])
        deadline = time.monotonic() + 15
        port = None
        while port is None and time.monotonic() < deadline:
            text = (children.tmp / "upstream.log").read_text()
            if "READY " in text:
                port = int(text.split("READY ")[1].split()[0])
            time.sleep(0.05)
        if port is None or up.poll() is not None:
            raise RuntimeError("upstream did not start")
        upstream = f"http://127.0.0.1:{port}"
        gateways: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        for name in ("off", "memory", "redis"):
            gateways[name] = children.gateway(
                name, gateway_toml(upstream, name, redis.url, args.trials, args.trial_rpm)
            )
        replica = children.gateway("redis2", gateway_toml(upstream, "redis", redis.url, args.trials, args.trial_rpm))
        for url, proc in [*gateways.values(), replica]:
            wait_ready(url, proc)
        for name, (url, proc) in gateways.items():  # warm-up, not reported
            cell(url, proc.pid, args.concurrency, 200, keyed=name != "off")
        p50s: dict[str, list[float]] = {name: [] for name in gateways}
        cpu: dict[str, list[float]] = {name: [] for name in gateways}
        for r in range(args.rounds):
            for name, (url, proc) in gateways.items():
                s = cell(url, proc.pid, args.concurrency, args.requests, keyed=name != "off")
                if s["errors"] or s["ok"] != args.requests:
                    raise RuntimeError(f"{name}: {s['errors']} errors, {s['ok']} ok: {s['error_kinds']}")
                p50s[name].append(s["ttfb_ms"]["p50"])
                cpu[name].append(s["server"]["cpu_ms_per_request"])
            print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} ms" for n, v in p50s.items()), flush=True)
        median = {name: statistics.median(v) for name, v in p50s.items()}
        print(f"\nSSE TTFB p50 at c={args.concurrency}, {args.requests} requests per cell, {args.rounds} rounds:")
        for name in gateways:
            added = median[name] - median["off"]
            paired = [a - b for a, b in zip(p50s[name], p50s["off"], strict=True)]
            print(
                f"  {name:<6} median p50 {median[name]:.2f} ms   added {added:+.2f} ms"
                f"   (per-round added: {', '.join(f'{d:+.2f}' for d in paired)})"
                f"   gateway CPU {statistics.median(cpu[name]):.3f} ms/request"
            )
        import uvloop

        uvloop.run(admission_report(redis.url))
        urls = [gateways["redis"][0], replica[0]]
        print(
            f"\nExactness: two replicas on one Redis, limit {args.trial_rpm}/min,"
            f" {3 * args.trial_rpm} requests at once:"
        )
        for t in range(args.trials):
            if time.time() % 60 > 50:
                time.sleep(61 - time.time() % 60)  # one burst, one clock minute
            accepted = asyncio.run(exactness(urls, t, args.trial_rpm))
            print(f"  trial {t + 1}: accepted {accepted} of {3 * args.trial_rpm} (limit {args.trial_rpm})", flush=True)
    finally:
        children.close()
        redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
