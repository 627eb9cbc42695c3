"""Draining on SIGTERM / SIGINT, against real `python -m app` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.observability.worker_metrics import WORKER_METRICS_DIR_ENV
from loadtests.processes import GatewayProcess
from tests.core.test_workers import ask_worker, children_of, environ_of, value
from tests.helpers.fake_provider import Behaviour, FakeProvider

SHORT = Behaviour(content=[f" t{i}" for i in range(10)], gap_s=0.2)  # ~2 s
MEDIUM = Behaviour(content=[f" t{i}" for i in range(30)], gap_s=0.2)  # ~6 s: outlasts opening a dozen
#: Streams opened at most, looking for both workers to run some (a new connection lands on either).
MAX_STREAMS = 40
LONG = Behaviour(content=[f" t{i}" for i in range(300)], gap_s=0.1)  # ~30 s
# JSON answers come whole after first_delay_s: these hold a JSON call open.
HOLD_SHORT = Behaviour(first_delay_s=1.5)
HOLD_LONG = Behaviour(first_delay_s=30)


def drain_gateway(tmp: Path, fake: FakeProvider, drain_s: float, delay_s: float, workers: int = 1) -> GatewayProcess:
    deployments = "".join(
        f'[[models.deployments]]\nname = "{name}"\nlitellm_model = "openai/{name}"\n'
        f'api_base = "{fake.base_url}"\nfast_path = {str(fast).lower()}\n\n'
        for name, fast in [
            ("drain_short", True),
            ("drain_medium", True),
            ("drain_long", True),
            ("drain_long_full", False),
            ("hold_short", True),
            ("hold_long", True),
            ("hold_long_full", False),
        ]
    )
    config = (
        f"[server]\ndrain_s = {drain_s}\nworkers = {workers}\n"
        f"shutdown_delay_s = {delay_s}\n\n[streaming]\nstatus_window_s = 0.2\n\n{deployments}"
    )
    # Info: the tests read the draining and request lines of its log.
    return GatewayProcess(tmp, config, {"CHAT_SERVER__LOG_LEVEL": "info"})


@pytest.fixture
def drain_fake(fake: FakeProvider) -> Iterator[FakeProvider]:
    fake.set_behaviour("drain_short", SHORT)
    fake.set_behaviour("drain_medium", MEDIUM)
    fake.set_behaviour("drain_long", LONG)
    fake.set_behaviour("drain_long_full", LONG)
    fake.set_behaviour("hold_short", HOLD_SHORT)
    fake.set_behaviour("hold_long", HOLD_LONG)
    fake.set_behaviour("hold_long_full", HOLD_LONG)
    yield fake


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def sse(client: httpx.AsyncClient, model: str) -> str:
    async with client.stream("POST", "/v1/chat/completions", json=body(model, stream=True)) as response:
        assert response.status_code == 200
        return (await response.aread()).decode()


async def ws_request(url: str, model: str) -> tuple[list[dict[str, Any]], int | None]:
    """Frames for one request, and the close code the server sent (None if still open)."""
    frames: list[dict[str, Any]] = []
    async with connect(url, subprotocols=["chat.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "w", "request": body(model)}))
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 40))
                frames.append(frame)
                if frame["type"] in ("chat.completion.done", "error"):
                    break
            await asyncio.wait_for(ws.recv(), 5)  # the server closes the socket after the drain
        except ConnectionClosed as closed:
            return frames, closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            return frames, None
    return frames, None


async def test_sigterm_lets_streams_finish_and_says_draining(tmp_path: Path, drain_fake: FakeProvider) -> None:
    gateway = drain_gateway(tmp_path, drain_fake, drain_s=10, delay_s=1.0)
    try:
        gateway.wait_ready(90)
        ws_url = f"ws://127.0.0.1:{gateway.port}/v1/chat/completions"
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=40) as client:
            streams = [asyncio.create_task(sse(client, "drain_short")) for _ in range(3)]
            sockets = [asyncio.create_task(ws_request(ws_url, "drain_short")) for _ in range(2)]
            json_call = asyncio.create_task(client.post("/v1/chat/completions", json=body("hold_short")))
            await drain_fake.await_request(6, timeout=10)
            signalled = time.monotonic()
            gateway.child.proc.send_signal(signal.SIGTERM)
            # Within shutdown_delay_s (1 s): not ready any more, but still serving.
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=5) as fresh:
                while (ready := await fresh.get("/health/ready")).status_code != 503:
                    assert time.monotonic() - signalled < 0.9, "readiness did not say draining in time"
                    await asyncio.sleep(0.02)
                assert ready.json()["status"] == "draining"
                assert (await fresh.get("/health/live")).status_code == 200
            texts = await asyncio.gather(*streams)
            ws_results = await asyncio.gather(*sockets)
            answer = await json_call
        for text in texts:
            assert text.rstrip().endswith("data: [DONE]"), text[-300:]
            assert "server_shutting_down" not in text
        for frames, _code in ws_results:
            assert frames[-1]["type"] == "chat.completion.done", frames[-1]
        assert answer.status_code == 200
        exit_code = await asyncio.to_thread(gateway.child.proc.wait, 15)
        took = time.monotonic() - signalled
        assert exit_code == 0, gateway.child.log.read_text()[-2000:]
        print(f"drain, streams finishing: exit {took:.2f} s after SIGTERM")
        assert took < 1.0 + 2.0 + 5.0, took  # the streams' ~2 s, the delay, and start-up slack
    finally:
        gateway.stop()


@pytest.mark.parametrize("model", ["drain_long", "drain_long_full"])
async def test_sigterm_ends_long_streams_in_band_after_drain_s(
    tmp_path: Path, drain_fake: FakeProvider, model: str
) -> None:
    drain_s = 1.0
    gateway = drain_gateway(tmp_path, drain_fake, drain_s=drain_s, delay_s=0)
    try:
        gateway.wait_ready(90)
        ws_url = f"ws://127.0.0.1:{gateway.port}/v1/chat/completions"
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=40) as client:
            stream = asyncio.create_task(sse(client, model))
            socket_task = asyncio.create_task(ws_request(ws_url, model))
            hold = model.replace("drain", "hold")
            json_call = asyncio.create_task(client.post("/v1/chat/completions", json=body(hold)))
            await drain_fake.await_request(3, timeout=10)
            await asyncio.sleep(0.5)  # mid-stream
            signalled = time.monotonic()
            gateway.child.proc.send_signal(signal.SIGTERM)
            text = await stream
            frames, close_code = await socket_task
            answer = await json_call
        assert "event: error" in text and "server_shutting_down" in text, text[-500:]
        assert "[DONE]" not in text
        assert frames[-1]["type"] == "error" and frames[-1]["status"] == 503, frames[-1]
        assert frames[-1]["error"]["code"] == "server_shutting_down"
        assert close_code == 1001
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "server_shutting_down"
        exit_code = await asyncio.to_thread(gateway.child.proc.wait, drain_s + 10)
        took = time.monotonic() - signalled
        assert exit_code == 0, gateway.child.log.read_text()[-2000:]
        print(f"drain, long {model}: exit {took:.2f} s after SIGTERM (drain_s {drain_s})")
        assert took < drain_s + 2.0 + 1.0, took  # drain_s + 2 s, plus the test's own scheduling
        for record in drain_fake.requests:
            await drain_fake.await_end(record, timeout=5)
            assert record.completed_at is None, "the provider saw its call closed, not finished"
        log = gateway.child.log.read_text()
        assert '"outcome":"shutdown"' in log
    finally:
        gateway.stop()


async def test_sigint_drains_too(tmp_path: Path, drain_fake: FakeProvider) -> None:
    gateway = drain_gateway(tmp_path, drain_fake, drain_s=5, delay_s=0)
    try:
        gateway.wait_ready(90)
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=40) as client:
            stream = asyncio.create_task(sse(client, "drain_short"))
            await drain_fake.await_request(1, timeout=10)
            gateway.child.proc.send_signal(signal.SIGINT)
            text = await stream
        assert text.rstrip().endswith("data: [DONE]")
        assert await asyncio.to_thread(gateway.child.proc.wait, 15) == 0
    finally:
        gateway.stop()


def worker_sockets(gateway: GatewayProcess, n: int, timeout: float = 60) -> dict[int, Path]:
    """The ``n`` workers' metrics sockets by pid, once each has one: a worker opens it at the end of
    its start-up, after it has taken over SIGTERM for the drain, so each of them drains from then on."""
    deadline = time.monotonic() + timeout
    while True:
        kids = children_of(gateway.pid)
        dirs = {environ_of(k).get(WORKER_METRICS_DIR_ENV) for k in kids} - {None}
        sockets = [p for d in dirs for p in Path(d or "").glob("worker-*.sock")]
        if len(sockets) == n:
            return {int(p.stem.removeprefix("worker-")): p for p in sockets}
        assert time.monotonic() < deadline, f"{n} worker sockets did not appear (children {kids})"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def log_events(gateway: GatewayProcess, event: str) -> list[dict[str, Any]]:
    """The log's ``event`` lines. Two workers share the log: a line of one can land in the middle of
    the other's, so objects are read wherever they start, not line by line."""
    text = gateway.child.log.read_text()
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    at = text.find("{")
    while at >= 0:
        try:
            obj, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
            continue
        if isinstance(obj, dict) and obj.get("event") == event:
            found.append(obj)
        at = text.find("{", end)
    return found


async def streams_per_worker(sockets: dict[int, Path]) -> dict[int, int]:
    return {
        pid: int(value(await ask_worker(sock), "chat_streams_active", transport="sse")) for pid, sock in sockets.items()
    }


async def test_sigterm_drains_every_worker(tmp_path: Path, drain_fake: FakeProvider) -> None:
    gateway = drain_gateway(tmp_path, drain_fake, drain_s=10, delay_s=0.5, workers=2)
    try:
        gateway.wait_ready(90)
        sockets = await asyncio.to_thread(worker_sockets, gateway, 2)
        async with contextlib.AsyncExitStack() as stack:
            # Streams, each on a connection of its own, until both workers run some (the kernel
            # spreads new connections between them; bounded).
            streams: list[asyncio.Task[str]] = []
            own: dict[int, int] = {}
            while len(streams) < 4 or min(own.values()) == 0:
                assert len(streams) < MAX_STREAMS, f"the streams all went to one worker: {own}"
                client = await stack.enter_async_context(httpx.AsyncClient(base_url=gateway.base_url, timeout=40))
                streams.append(asyncio.create_task(sse(client, "drain_medium")))
                await drain_fake.await_request(len(streams), timeout=10)
                own = await streams_per_worker(sockets)
                # A moment between connections: the worker busy with the last one's stream is then
                # as likely as the idle one to be waiting in accept (twelve in a row went to one worker
                # in a CI run).
                await asyncio.sleep(0.05)
            gateway.child.proc.send_signal(signal.SIGTERM)
            # The supervisor passes the signal on within its 0.5 s poll; then the workers say so.
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=5) as fresh:
                deadline = time.monotonic() + 3
                while (await fresh.get("/health/ready")).status_code != 503:
                    assert time.monotonic() < deadline, "readiness never said draining"
                    await asyncio.sleep(0.05)
            texts = await asyncio.gather(*streams, return_exceptions=True)
        log = gateway.child.log.read_text()[-3000:]
        assert not [t for t in texts if isinstance(t, BaseException)], (texts, own, log)
        for text in texts:
            assert isinstance(text, str) and text.rstrip().endswith("data: [DONE]"), text
        assert await asyncio.to_thread(gateway.child.proc.wait, 20) == 0, log
        # Each worker drained its own streams: one "draining" line each with the streams it ran
        # then, one "drained" line each with none ended in-band, and both processes gone.
        draining, drained = log_events(gateway, "draining"), log_events(gateway, "drained")
        assert sorted(e["in_flight"] for e in draining) == sorted(own.values()), (draining, own, log)
        assert [e["ended_in_band"] for e in drained] == [0, 0], (drained, log)
        assert not [p for p in sockets if alive(p)], "a worker outlived the supervisor"
    finally:
        gateway.stop()
