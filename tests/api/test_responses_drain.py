"""A drain (docs/running.md) ends Responses streams in-band like chat streams: SSE with
``response.failed`` (``server_shutting_down``), a background response likewise, WebSocket mode
with the same event before the socket closes with 1001; and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.responses_support import KEY_A, sse_events, start_gateway

LONG = Behaviour(content=[f" t{i}" for i in range(300)], gap_s=0.1)  # ~30 s


async def ws_events(url: str) -> tuple[list[dict[str, Any]], int | None]:
    events: list[dict[str, Any]] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY_A}"}, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "response.create", "model": "drain_long", "input": "hi"}))
        try:
            while True:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 40)))
        except ConnectionClosed as closed:
            return events, closed.rcvd.code if closed.rcvd else None


async def test_a_drain_ends_responses_in_band(tmp_path: Path, fake: FakeProvider) -> None:
    fake.set_behaviour("drain_long", LONG)
    gateway = start_gateway(tmp_path, fake, env={"CHAT_SERVER__DRAIN_S": "1"}, name="drain-gw")
    try:
        headers = {"Authorization": f"Bearer {KEY_A}"}
        async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers, timeout=40) as client:

            async def sse() -> str:
                body = {"model": "drain_long", "input": "hi", "stream": True}
                async with client.stream("POST", "/v1/responses", json=body) as response:
                    assert response.status_code == 200
                    return (await response.aread()).decode()

            stream = asyncio.create_task(sse())
            socket = asyncio.create_task(ws_events(f"ws://127.0.0.1:{gateway.port}/v1/responses"))
            background = await client.post(
                "/v1/responses", json={"model": "drain_long", "input": "x", "background": True}
            )
            assert background.status_code == 200
            await fake.await_request(3, timeout=10)
            await asyncio.sleep(0.3)  # each has streamed a few chunks
            gateway.child.proc.send_signal(signal.SIGTERM)
            text = await stream
            events, code = await socket
        final = sse_events(text)[-1][2]
        assert final["type"] == "response.failed"
        assert "server_shutting_down" in final["response"]["error"]["message"]
        assert events[-1]["type"] == "response.failed"
        assert "server_shutting_down" in events[-1]["response"]["error"]["message"]
        assert code == 1001
        assert await asyncio.to_thread(gateway.child.proc.wait, 15) == 0
    finally:
        gateway.stop()
