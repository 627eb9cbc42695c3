"""A Responses call holds one admission lease (its stream slot) for as long as it runs and gives it
back when it ends, however it ends: a streamed background response read by the call that started
it, and a stream whose client left while its record was being saved to a stalled Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from loadtests.processes import GatewayProcess, RedisProcess
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.responses_support import KEY_A, sse_events, start_gateway

ONE_STREAM = "[rate_limit]\nconcurrent_streams = 1\ntokens_per_minute = 300\n\n"


def client(gateway: GatewayProcess, timeout: float = 15) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=timeout)


def admitted_again(gateway: GatewayProcess, within_s: float) -> httpx.Response:
    """A streamed response for the same key, retried until its one slot is free (bounded)."""
    deadline = time.monotonic() + within_s
    with client(gateway) as http:
        while True:
            r = http.post("/v1/responses", json={"model": "normal", "input": "again", "stream": True})
            if r.status_code != 429 or time.monotonic() > deadline:
                return r
            time.sleep(0.1)


@pytest.fixture(scope="module")
def one_stream(fake_provider: FakeProvider, tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path_factory.mktemp("responses-one-stream"), fake_provider, extra=ONE_STREAM)
    yield gateway
    gateway.stop()


def test_a_streamed_background_response_takes_one_slot(one_stream: GatewayProcess) -> None:
    with client(one_stream) as http:
        body = {"model": "normal", "input": "in the background", "stream": True, "background": True}
        r = http.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        assert sse_events(r.text)[-1][2]["type"] == "response.completed"
        rid = r.headers["x-response-id"]
        assert http.get(f"/v1/responses/{rid}").json()["status"] == "completed"
    again = admitted_again(one_stream, 5)
    assert again.status_code == 200, again.text


async def test_a_prepared_turn_counts_as_a_request_not_as_tokens(one_stream: GatewayProcess) -> None:
    """``generate: false`` over the WebSocket: admitted (the model known, the key's requests counted)
    but its input, which no provider reads, is not counted against the key's 300 tokens a minute."""
    url = f"ws://127.0.0.1:{one_stream.port}/v1/responses"
    async with ws_connect(url, additional_headers={"Authorization": f"Bearer {KEY_A}"}, open_timeout=10) as ws:
        long_input = "word " * 400  # ~500 tokens at four bytes a token, over the minute's 300
        await ws.send(
            json.dumps({"type": "response.create", "model": "normal", "input": long_input, "generate": False})
        )
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        while event["type"] not in ("response.completed", "error"):
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert event["type"] == "response.completed", event
    again = admitted_again(one_stream, 5)
    assert again.status_code == 200, again.text


def test_a_stream_left_while_its_record_is_saved_gives_its_slot_back(
    fake_provider: FakeProvider, tmp_path: Path
) -> None:
    redis = RedisProcess(tmp_path).start()
    extra = f'{ONE_STREAM}[redis]\nurl = "{redis.url}"\n\n[responses]\nstore = "redis"\n\n'
    gateway: GatewayProcess | None = None
    try:
        gateway = start_gateway(tmp_path, fake_provider, extra=extra, name="stalled-store")
        redis.pause()  # the in-progress record's save now waits out the store's 1 s bound
        with client(gateway, timeout=0.3) as http, pytest.raises(httpx.TimeoutException):
            http.post("/v1/responses", json={"model": "normal", "input": "leaving", "stream": True})
        redis.resume()
        # The stream the client never got is closed when the save is abandoned: the slot is free.
        again = admitted_again(gateway, 8)
        assert again.status_code == 200, again.text
        assert sse_events(again.text)[-1][2]["type"] == "response.completed"
    finally:
        try:
            if gateway is not None:
                gateway.stop()
        finally:
            redis.stop()  # resumes a paused server first
