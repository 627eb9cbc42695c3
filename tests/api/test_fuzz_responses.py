"""Property-based fuzzing of Responses bodies and WebSocket frames (docs/responses.md), on both provider paths:
every example ends in a success or a contract error, never a 5xx, a hang, a provider key in the
output, or a socket lost to one bad frame. Same bounds as tests/test_fuzz.py (``FUZZ_EXAMPLES``)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.api.test_fuzz import CALL_TIMEOUT_S, FUZZ, PROVIDER_KEY, check_http_reply, fuzzed
from tests.conftest import ServerThread
from tests.helpers.fuzz_strategies import raw_responses_bodies, responses_bodies, responses_frames

__all__ = ["fuzzed"]  # the gateway fixture, shared with the chat fuzz tests


def post(client: httpx.Client, content: bytes, stream: bool) -> None:
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    with client.stream("POST", "/v1/responses", content=content, headers=headers) as response:
        text = response.read().decode("utf-8", "replace")
    check_http_reply(response, text)
    if response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream"):
        for block in text.split("\n\n"):
            if "data: " in block:
                event = json.loads(block.split("data: ", 1)[1])
                if event["type"] == "response.failed":
                    assert event["response"]["error"]["type"] not in ("server_error",), block


@FUZZ
@given(body=responses_bodies(), stream=st.booleans())
def test_fuzzed_responses_bodies(fuzzed: ServerThread, body: dict[str, Any], stream: bool) -> None:
    with httpx.Client(base_url=fuzzed.base_url, timeout=CALL_TIMEOUT_S) as client:
        post(client, json.dumps(body).encode(), stream)


@FUZZ
@given(raw=raw_responses_bodies, stream=st.booleans())
def test_fuzzed_raw_responses_bodies(fuzzed: ServerThread, raw: bytes, stream: bool) -> None:
    with httpx.Client(base_url=fuzzed.base_url, timeout=CALL_TIMEOUT_S) as client:
        post(client, raw, stream)


@FUZZ
@given(frames=st.lists(responses_frames(), min_size=1, max_size=5))
def test_fuzzed_responses_frames(fuzzed: ServerThread, frames: list[str | bytes]) -> None:
    """The frames, then a probe: the socket must still serve it; no event is a 5xx or leaks the key."""
    url = f"ws://127.0.0.1:{fuzzed.port}/v1/responses"
    with connect(url, open_timeout=5) as ws:
        for frame in frames:
            ws.send(frame)
        probe = json.dumps({"type": "response.create", "model": "fast", "input": "still there?", "store": False})
        ws.send(probe)
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            assert time.monotonic() < deadline, "the probe never completed after the fuzzed frames"
            event = json.loads(ws.recv(timeout=CALL_TIMEOUT_S))
            assert PROVIDER_KEY not in json.dumps(event)
            if event["type"] == "error":
                assert event["status"] < 500, event
                if event["error"]["code"] == "response_in_progress":
                    time.sleep(0.05)
                    ws.send(probe)  # a fuzzed create still runs: one at a time, so ask again
            if event["type"] == "response.completed" and event["response"]["output"]:
                if (
                    event["response"]["output"][0].get("content", [{}])[0].get("text")
                    == "Hello, world! This is the fake provider."
                ):
                    return
