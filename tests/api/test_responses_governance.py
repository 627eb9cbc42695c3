"""What the gateway does for chat completions holds for the Responses API (docs/responses.md): the cache (a
JSON answer replayed as a stream and the reverse), a named key's allow-list and its rate-limit
headers, the detach grace (a stream whose client left runs on and is resumed), against a real
``python -m app``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtests.processes import GatewayProcess
from tests.helpers.fake_provider import DEFAULT_CONTENT, FakeProvider
from tests.helpers.responses_support import sse_events, start_gateway

HELLO = "".join(DEFAULT_CONTENT)
NAMED_KEY = "resp-named-key-1"
KEYS = (
    "[cache]\nenabled = true\n\n"
    '[[keys]]\nname = "team"\nkey_env = "GW_RESP_NAMED"\n'
    'models = ["normal", "tools", "slow_gap"]\nrequests_per_minute = 1000\n\n'
)


@pytest.fixture(scope="module")
def governed(fake_provider: FakeProvider, tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("responses-governed"),
        fake_provider,
        extra=KEYS,
        streaming="detach_grace_s = 5\n",
        env={"GW_RESP_NAMED": NAMED_KEY},
    )
    yield gateway
    gateway.stop()


@pytest.fixture
def http(governed: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=governed.base_url, headers={"Authorization": f"Bearer {NAMED_KEY}"}, timeout=15) as c:
        yield c


def text_of(response: dict[str, Any]) -> str:
    return "".join(p["text"] for item in response["output"] if item["type"] == "message" for p in item["content"])


def test_a_json_answer_is_replayed_as_a_stream_and_the_reverse(http: httpx.Client, fake: FakeProvider) -> None:
    first = http.post("/v1/responses", json={"model": "normal", "input": "cache me"})
    assert first.headers["x-cache"] == "MISS"
    streamed = http.post("/v1/responses", json={"model": "normal", "input": "cache me", "stream": True})
    assert streamed.headers["x-cache"] == "HIT"
    events = sse_events(streamed.text)
    assert events[-1][2]["type"] == "response.completed"
    assert text_of(events[-1][2]["response"]) == text_of(first.json()) == HELLO
    other = http.post("/v1/responses", json={"model": "normal", "input": "stream first", "stream": True})
    assert other.headers["x-cache"] == "MISS"
    again = http.post("/v1/responses", json={"model": "normal", "input": "stream first"})
    assert again.headers["x-cache"] == "HIT" and text_of(again.json()) == HELLO
    assert len([r for r in fake.requests if r.model == "normal"]) == 2


def test_the_keys_allow_list_and_rate_limit_headers(http: httpx.Client) -> None:
    refused = http.post("/v1/responses", json={"model": "reasoning", "input": "x"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    allowed = http.post("/v1/responses", json={"model": "normal", "input": "limits", "stream": True})
    assert allowed.status_code == 200
    assert allowed.headers["x-ratelimit-limit-requests"] == "1000"


def test_a_stream_whose_client_left_runs_on_and_is_resumed(http: httpx.Client) -> None:
    body = {"model": "slow_gap", "input": "detach me", "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as live:
        rid = live.headers["x-response-id"]
        for piece in live.iter_bytes():
            if b"response.output_text.delta" in piece:
                break
    deadline = time.monotonic() + 15
    while (stored := http.get(f"/v1/responses/{rid}").json())["status"] != "completed":
        assert time.monotonic() < deadline, f"the detached response never completed: {stored['status']}"
        time.sleep(0.1)
    assert text_of(stored) == HELLO
    replay = http.get(f"/v1/responses/{rid}", params={"stream": "true"})
    events = sse_events(replay.text)
    assert events[-1][2]["type"] == "response.completed"
    assert text_of(events[-1][2]["response"]) == HELLO
