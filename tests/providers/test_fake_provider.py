"""Self-tests for the fake provider: it must be trustworthy before other tests lean on it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers.fake_provider import Behaviour, FakeProvider


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(provider: FakeProvider) -> FakeProvider:
    provider.reset()
    return provider


def _events(lines: Iterator[str]) -> list[str]:
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def _chat(model: str, stream: bool = True, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


def test_normal_stream_chunks_and_done(fake: FakeProvider) -> None:
    with httpx.Client(base_url=fake.base_url, timeout=5) as client:
        with client.stream("POST", "/chat/completions", json=_chat("normal")) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream"
            events = _events(resp.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 11  # 10 tokens + finish chunk, no usage chunk unless asked
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello, world! This is the fake provider."
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    record = fake.wait_for_end(fake.wait_for_request())
    assert record.completed_at is not None and record.disconnected_at is None
    assert len(record.chunk_times) == 12
    assert fake.calls("normal") == 1


def test_include_usage_chunk(fake: FakeProvider) -> None:
    body = _chat("unknown-model-acts-normal", stream_options={"include_usage": True})
    with httpx.Client(base_url=fake.base_url, timeout=5) as client:
        with client.stream("POST", "/chat/completions", json=body) as resp:
            events = _events(resp.iter_lines())
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17}


def test_non_stream_json_and_models(fake: FakeProvider) -> None:
    with httpx.Client(base_url=fake.base_url, timeout=5) as client:
        resp = client.post("/chat/completions", json=_chat("script", stream=False))
        models = client.get("/models").json()
        missing = client.get("/nope")
    data = resp.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-fake-")
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "<script>alert(1)</script> done"}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["total_tokens"] == 11
    assert {"normal", "hang", "rate_limited"} <= {m["id"] for m in models["data"]}
    assert missing.status_code == 404 and "error" in missing.json()


def test_tool_call_stream_reassembles(fake: FakeProvider) -> None:
    # The un-prefixed route, as some clients configure api_base without /v1.
    with httpx.Client(base_url=f"http://127.0.0.1:{fake.port}", timeout=5) as client:
        with client.stream("POST", "/chat/completions", json=_chat("tools")) as resp:
            chunks = [json.loads(e) for e in _events(resp.iter_lines())[:-1]]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_error_status_with_retry_after(fake: FakeProvider) -> None:
    with httpx.Client(base_url=fake.base_url, timeout=5) as client:
        resp = client.post("/chat/completions", json=_chat("rate_limited"))
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    assert resp.json() == {
        "error": {"message": "Rate limit reached.", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }


def test_drop_breaks_the_stream(fake: FakeProvider) -> None:
    received: list[str] = []
    with httpx.Client(base_url=fake.base_url, timeout=5) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with client.stream("POST", "/chat/completions", json=_chat("drop")) as resp:
                received.extend(_events_lazy(resp))
    assert len(received) == 2 and "[DONE]" not in received
    record = fake.wait_for_end(fake.wait_for_request())
    assert record.aborted_at is not None and record.completed_at is None


def _events_lazy(resp: httpx.Response) -> Iterator[str]:
    for line in resp.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


def test_disconnect_detected_while_hanging(fake: FakeProvider) -> None:
    started = time.monotonic()
    with httpx.Client(base_url=fake.base_url, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/chat/completions", json=_chat("hang"))
        close_time = time.monotonic()
    record = fake.wait_for_request()
    disconnected_at = fake.wait_for_disconnect(record, timeout=2)
    assert disconnected_at - started >= 0.19
    assert disconnected_at - close_time < 0.1
    assert record.first_byte_at is None and record.completed_at is None


# "silent" goes quiet after 2 chunks, so closing there tests the silence phase.
@pytest.mark.parametrize("model, read_events", [("silent", 2), ("hang_after_headers", 0)])
def test_disconnect_detected_mid_stream(fake: FakeProvider, model: str, read_events: int) -> None:
    with httpx.Client(base_url=fake.base_url, timeout=5) as client:
        with client.stream("POST", "/chat/completions", json=_chat(model)) as resp:
            events = _events_lazy(resp)
            for _ in range(read_events):
                next(events)
        close_time = time.monotonic()  # leaving the block on an unfinished body closes the socket
    record = fake.wait_for_request()
    assert fake.wait_for_disconnect(record, timeout=2) - close_time < 0.1
    assert record.completed_at is None and record.first_byte_at is not None


def test_async_waits_and_custom_behaviour(fake: FakeProvider) -> None:
    fake.set_behaviour("slow", Behaviour(content=["a", "b"], first_delay_s=0.3))

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=fake.base_url, timeout=5) as client:
            task = asyncio.create_task(client.post("/chat/completions", json=_chat("slow", stream=False)))
            record = await fake.await_request()
            assert record.model == "slow" and record.headers["content-type"] == "application/json"
            task.cancel()  # disconnect before the first byte
            closed = time.monotonic()
            assert await fake.await_disconnect(record, timeout=2) - closed < 0.1

    asyncio.run(scenario())
    with pytest.raises(TimeoutError):
        fake.wait_for_request(2, timeout=0.05)
