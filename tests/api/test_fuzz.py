"""Property-based fuzzing of chat bodies and WebSocket frames, on both provider paths.

Each example must end in a success or a contract error: never a 5xx from the gateway's own code,
never a hang (every call is bounded), never a provider key in the output, never a socket lost to
one bad frame. CI runs a bounded, derandomised number of examples (``FUZZ_EXAMPLES``, default 60
per test); ``loadtests/fuzz.py`` runs the same strategies for as long as asked.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from app.config.settings import settings_from_dict
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.fuzz_strategies import chat_bodies, client_frames, embeddings_bodies, messages_bodies, raw_bodies

PROVIDER_KEY = "sk-fuzz-Q1w2E3r4T5y6U7i8O9p0"
KEY_ENV = "FUZZ_PROVIDER_KEY"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
CALL_TIMEOUT_S = 15.0  # a call that takes longer than this is a hang
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # CI is reproducible; loadtests/fuzz.py explores with fresh seeds
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
#: The fake provider answers every model the strategies name without failing, so any 5xx is the
#: gateway's (or LiteLLM choking on a value the gateway should have refused): none is allowed.


@pytest.fixture(scope="module", params=["fast", "full"])
def fuzzed(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    data = settings_dict(fake_provider.base_url, fast_path=request.param == "fast")
    data["models"]["deployments"].append(
        {
            "name": "embed",
            "litellm_model": "openai/embed",
            "api_base": fake_provider.base_url,
            "info": {"mode": "embedding"},
        }
    )
    for dep in data["models"]["deployments"]:
        if dep["litellm_model"].startswith("openai/"):
            dep["api_key_env"] = KEY_ENV
    settings = settings_from_dict(data, environ={KEY_ENV: PROVIDER_KEY})
    server = ServerThread(settings, environ={KEY_ENV: PROVIDER_KEY}).start()
    yield server
    server.stop()


def check_http_reply(response: httpx.Response, text: str) -> None:
    assert PROVIDER_KEY not in text
    assert response.status_code < 500, text
    if response.status_code >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        for block in text.split("\n\n"):
            if block.startswith("event: error") or "\nevent: error" in block:
                payload = json.loads(block.split("data: ", 1)[1])
                assert payload["error"]["type"] not in ("server_error", "upstream_error"), block


def post(client: httpx.Client, content: bytes, stream: bool) -> None:
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    with client.stream("POST", "/v1/chat/completions", content=content, headers=headers) as response:
        text = response.read().decode("utf-8", "replace")
    check_http_reply(response, text)


@FUZZ
@given(body=chat_bodies(), stream=st.booleans())
def test_fuzzed_chat_bodies(fuzzed: ServerThread, body: dict[str, Any], stream: bool) -> None:
    with httpx.Client(base_url=fuzzed.base_url, timeout=CALL_TIMEOUT_S) as client:
        post(client, json.dumps(body).encode(), stream)


@FUZZ
@given(raw=raw_bodies, stream=st.booleans())
def test_fuzzed_raw_bodies(fuzzed: ServerThread, raw: bytes, stream: bool) -> None:
    with httpx.Client(base_url=fuzzed.base_url, timeout=CALL_TIMEOUT_S) as client:
        post(client, raw, stream)


PROBE = "\x00probe-after-fuzz"
FINAL = ("chat.completion.done", "error")


def finals_owed(frames: list[str | bytes]) -> Counter[str]:
    """How many final frames (done or error) each client id is owed (API.md 2): one for every
    frame that names a string id and is not a cancel (a create, or a frame that cannot be read but
    whose id can: its error carries the id). A cancel answers nothing of its own."""
    owed: Counter[str] = Counter()
    for frame in frames:
        try:
            parsed = json.loads(frame)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's limit: no id
            continue
        if not isinstance(parsed, dict) or not isinstance(parsed.get("id"), str) or len(parsed["id"]) > 256:
            continue
        if parsed.get("type") == "chat.completion.cancel":
            continue
        owed[parsed["id"]] += 1
    return owed


def read_until(ws: ClientConnection, replies: list[dict[str, Any]], owed: Counter[str]) -> None:
    """Read into ``replies`` until every id has had the final frames it is owed (bounded per frame)."""
    got = Counter(r["id"] for r in replies if r["type"] in FINAL and isinstance(r.get("id"), str))
    while any(got[i] < n for i, n in owed.items()):
        missing = {i: n - got[i] for i, n in owed.items() if got[i] < n}
        try:
            reply = json.loads(ws.recv(timeout=CALL_TIMEOUT_S))
        except TimeoutError:
            raise AssertionError(f"no final frame for {missing} after {CALL_TIMEOUT_S} s: {replies}") from None
        replies.append(reply)
        if reply["type"] in FINAL and isinstance(reply.get("id"), str):
            got[reply["id"]] += 1


def check_frames(ws_url: str, frames: list[str | bytes]) -> None:
    """Send ``frames`` on one socket and read every reply until each request among them has its
    final frame, then a probe: the socket must still serve it, and no reply at all may be a 5xx or
    carry the provider key."""
    replies: list[dict[str, Any]] = []
    with connect(ws_url, subprotocols=["chat.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
        for frame in frames:
            ws.send(frame)
        read_until(ws, replies, finals_owed(frames))
        # Every fuzzed request has ended, so the probe meets no in-flight limit: it must run.
        probe = {"model": "fast", "messages": [{"role": "user", "content": "still there?"}]}
        before = len(replies)
        ws.send(json.dumps({"type": "chat.completion.create", "id": PROBE, "request": probe}))
        read_until(ws, replies, Counter({PROBE: 1}))
        probe_final = [r for r in replies[before:] if r.get("id") == PROBE and r["type"] in FINAL]
        assert probe_final[0]["type"] == "chat.completion.done", probe_final
    for reply in replies:
        assert PROVIDER_KEY not in json.dumps(reply)
        if reply["type"] == "error":
            assert reply["status"] < 500, reply


@FUZZ
@given(frames=st.lists(client_frames(), min_size=1, max_size=6))
def test_fuzzed_websocket_frames(fuzzed: ServerThread, frames: list[str | bytes]) -> None:
    check_frames(fuzzed.ws_url, frames)


# ---- the Messages API and embeddings ---------------------------------------------------------------


def check_messages_reply(response: httpx.Response, text: str) -> None:
    assert PROVIDER_KEY not in text
    assert response.status_code < 500, text
    if response.status_code >= 400:
        error = json.loads(text)
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}
        if response.status_code == 400:
            assert error["error"]["message"]  # names what is wrong
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        for block in text.split("\n\n"):
            if block.startswith("event: error"):
                payload = json.loads(block.split("data: ", 1)[1])
                assert payload["error"]["type"] not in ("api_error", "overloaded_error"), block


@FUZZ
@given(body=messages_bodies(), stream=st.booleans())
def test_fuzzed_messages_bodies(fuzzed: ServerThread, body: dict[str, Any], stream: bool) -> None:
    if stream and isinstance(body, dict) and "stream" not in body:
        body["stream"] = True
    with httpx.Client(base_url=fuzzed.base_url, timeout=CALL_TIMEOUT_S) as client:
        with client.stream("POST", "/v1/messages", json=body) as response:
            text = response.read().decode("utf-8", "replace")
    check_messages_reply(response, text)


@FUZZ
@given(body=embeddings_bodies())
def test_fuzzed_embeddings_bodies(fuzzed: ServerThread, body: dict[str, Any]) -> None:
    with httpx.Client(base_url=fuzzed.base_url, timeout=CALL_TIMEOUT_S) as client:
        response = client.post("/v1/embeddings", json=body)
    check_http_reply(response, response.text)
