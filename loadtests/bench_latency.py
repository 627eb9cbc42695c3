"""Loopback measurements quoted in the issues' closing notes (not run by CI).

    .venv/bin/python -m loadtests.bench_latency

Starts the fake provider of the test suite in this process and the gateway as a subprocess
(`python -m app` on a generated config), then measures:
- relay latency: the provider writing a chunk -> the client reading it (p50 over 1000 chunks), per path;
- client disconnect (SSE) and WebSocket cancel -> the provider seeing its connection closed;
- /api/models/search latency under a small sequential load;
- cache: JSON miss vs hit latency with the memory and the Redis backend;
- idle WebSockets one worker holds, and RSS per socket.
Both processes use CLOCK_MONOTONIC, so times taken in either can be subtracted.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.helpers.fake_provider import Behaviour, FakeProvider

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def fmt_ms(values: list[float]) -> str:
    p50, p95, p99 = (pct(values, p) * 1000 for p in (50, 95, 99))
    return f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms (n={len(values)})"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Gateway:
    def __init__(self, fake_url: str, extra: str = "") -> None:
        self.port = free_port()
        deployments = ""
        for name, fast in (("fast", "true"), ("full", "false")):
            for model in ("bench", "slow_gap", "hang"):
                deployments += f"""
[[models.deployments]]
name = "{model}-{name}"
litellm_model = "openai/{model}"
api_base = "{fake_url}"
fast_path = {fast}
"""
        self.config = Path(tempfile.mkdtemp()) / "bench.toml"
        self.config.write_text(f"""
[server]
port = {self.port}
log_level = "warning"
[streaming]
status_window_s = 0.5
[websocket]
max_inflight = 64
{extra}
{deployments}
""")
        env = {**os.environ, "CHAT_CONFIG": str(self.config), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


async def relay_latency(gw: Gateway, fake: FakeProvider, path: str) -> list[float]:
    gaps: list[float] = []
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        for i in range(21):
            fake.reset()
            received: list[float] = []
            body = {"model": f"bench-{path}", "stream": True, "messages": [{"role": "user", "content": f"x{i}"}]}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        received.append(time.monotonic())
            sent = fake.requests[0].chunk_times
            if i == 0:
                continue  # warm-up
            # The fake's first times are the content chunks in order; pair them with what arrived.
            gaps.extend(r_ - s_ for s_, r_ in zip(sent[: len(received)], received, strict=False))
    return gaps


async def disconnect_to_close(gw: Gateway, fake: FakeProvider, path: str) -> list[float]:
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        for i in range(20):
            fake.reset()
            body = {"model": f"slow_gap-{path}", "stream": True, "messages": [{"role": "user", "content": f"d{i}"}]}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break
                record = fake.requests[0]
                left = time.monotonic()
            delays.append(await fake.await_disconnect(record, timeout=5) - left)
    return delays


async def cancel_to_close(gw: Gateway, fake: FakeProvider, path: str) -> list[float]:
    delays: list[float] = []
    async with connect(gw.url.replace("http", "ws") + "/v1/chat/completions") as ws:
        for i in range(20):
            fake.reset()
            req = {"model": f"slow_gap-{path}", "messages": [{"role": "user", "content": f"c{i}"}]}
            await ws.send(json.dumps({"type": "chat.completion.create", "id": f"c{i}", "request": req}))
            while json.loads(await ws.recv())["type"] != "chat.completion.chunk":
                pass
            record = fake.requests[0]
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "chat.completion.cancel", "id": f"c{i}"}))
            delays.append(await fake.await_disconnect(record, timeout=5) - sent)
            while json.loads(await ws.recv())["type"] != "chat.completion.done":
                pass
    return delays


async def search_latency(gw: Gateway) -> list[float]:
    times = []
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        for _ in range(50):
            await client.get("/api/models/search?provider=openai&min_context=0")
        for _ in range(1000):
            t = time.perf_counter()
            r = await client.get("/api/models/search?provider=openai&capability=tools&max_input_cost=1")
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
    return times


async def cache_latency(gw: Gateway) -> tuple[list[float], list[float]]:
    miss, hit = [], []
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        for i in range(200):
            body = {"model": "bench-fast", "messages": [{"role": "user", "content": f"cache {i} {time.time_ns()}"}]}
            t = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body)
            miss.append(time.perf_counter() - t)
            assert r.headers["x-cache"] == "MISS"
            t = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body)
            hit.append(time.perf_counter() - t)
            assert r.headers["x-cache"] == "HIT", r.headers
    return miss[10:], hit[10:]


async def idle_sockets(gw: Gateway, n: int) -> tuple[int, float]:
    base = rss_kib(gw.proc.pid)
    sockets = []
    try:
        for _ in range(n):
            sockets.append(await connect(gw.url.replace("http", "ws") + "/v1/chat/completions"))
        await asyncio.sleep(1)
        held = sum(1 for s in sockets if s.state.name == "OPEN")
        grown = rss_kib(gw.proc.pid) - base
    finally:
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
    return held, grown / max(1, held)


async def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fake = FakeProvider().start()
    fake.set_behaviour("bench", Behaviour(content=[f" t{i}" for i in range(50)], gap_s=0.01))
    fake.set_behaviour("slow_gap", Behaviour(content=[f" t{i}" for i in range(50)], gap_s=0.3))
    gw = Gateway(fake.base_url)
    try:
        for path in ("fast", "full"):
            print(f"[{path}] relay latency provider->client:", fmt_ms(await relay_latency(gw, fake, path)))
            print(f"[{path}] SSE disconnect -> provider sees close:", fmt_ms(await disconnect_to_close(gw, fake, path)))
            print(f"[{path}] WS cancel -> provider sees close:", fmt_ms(await cancel_to_close(gw, fake, path)))
        print("/api/models/search:", fmt_ms(await search_latency(gw)))
        n = 2000
        held, per = await idle_sockets(gw, n)
        print(f"idle WebSockets held by one worker: {held}/{n}, RSS {per:.1f} KiB per socket")
    finally:
        gw.stop()
    for backend, extra in (
        ("memory", '[cache]\nenabled = true\nbackend = "memory"'),
        ("redis", '[cache]\nenabled = true\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379/14"'),
    ):
        fake.set_behaviour("bench", Behaviour(content=[f" t{i}" for i in range(20)], gap_s=0.0))
        gw = Gateway(fake.base_url, extra)
        try:
            miss, hit = await cache_latency(gw)
            print(
                f"[cache {backend}] miss: {fmt_ms(miss)}; hit: {fmt_ms(hit)}; "
                f"hit saves {(pct(miss, 50) - pct(hit, 50)) * 1000:.2f} ms at p50"
            )
        finally:
            gw.stop()
    fake.stop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
