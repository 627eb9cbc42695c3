"""SSE answers with no status window (``status_window_s = 0``): the response starts at once and its
pump pulls the first event in its own task (``api/status_window.py`` ``open_window``), for chat
completions, Messages and Responses, relayed and through LiteLLM."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TEST_STREAMING, ServerThread, make_settings
from tests.helpers.fake_provider import DEFAULT_CONTENT, FakeProvider
from tests.helpers.sse import chat_body, read_events, stream_chat


@pytest.fixture(scope="module", params=["fast", "full"])
def windowless(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    streaming = {**TEST_STREAMING, "status_window_s": 0}
    server = ServerThread(make_settings(fake_provider.base_url, fast_path=request.param == "fast", streaming=streaming))
    yield server.start()
    server.stop()


@pytest.fixture
async def client(windowless: ServerThread) -> httpx.AsyncClient:  # type: ignore[misc]
    async with httpx.AsyncClient(base_url=windowless.base_url, timeout=10) as c:
        yield c


async def test_a_stream_is_answered_whole(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("normal", stream=True))
    assert result.status == 200
    sid = result.headers["x-stream-id"]
    events = result.data_events
    assert [e.id for e in events] == [f"{sid}:{i}" for i in range(1, len(events) + 1)]
    assert events[-1].data == "[DONE]"
    assert result.content() == "".join(DEFAULT_CONTENT)


async def test_a_provider_error_comes_in_band(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    # With no window the status is sent before the provider answers: its error is the last event.
    result = await stream_chat(client, chat_body("rate_limited", stream=True))
    assert result.error_in_band()["code"] == "rate_limit_exceeded"


async def test_a_first_chunk_that_never_comes_ends_the_stream_at_its_deadline(
    client: httpx.AsyncClient, fake: FakeProvider
) -> None:
    async with asyncio.timeout(5):
        result = await stream_chat(client, chat_body("hang_after_headers", stream=True))
    assert result.error_in_band()["code"] == "upstream_timeout"


async def test_the_first_event_is_pulled_by_the_response_itself(
    client: httpx.AsyncClient, windowless: ServerThread, fake: FakeProvider
) -> None:
    # slow_first: the first chunk after 0.5 s. Meanwhile the response has started, and the only task
    # waiting on the provider is the request's own: no task of the first event's (its hand-over to
    # the response would cost a loop turn).
    async def first_event_tasks() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("first-event:")]

    body, headers = chat_body("slow_first", stream=True), {"Accept": "text/event-stream"}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200  # the start came before the first chunk
        await asyncio.to_thread(fake.wait_for_model, "slow_first")
        pulled_by = await asyncio.to_thread(windowless.call, first_event_tasks())
        events = await read_events(r)
    assert pulled_by == []
    assert [e.data for e in events if e.data is not None][-1] == "[DONE]"


async def test_messages_and_responses_streams_are_answered_whole(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    message = {"model": "normal", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client.stream("POST", "/v1/messages", json=message) as r:
        assert r.status_code == 200
        messages = [e for e in await read_events(r) if e.data is not None]
    assert messages[0].event == "message_start"
    assert messages[-1].event == "message_stop"
    text = "".join(
        d["delta"].get("text", "")
        for e in messages
        if (d := json.loads(e.data or "{}"))["type"] == "content_block_delta"
    )
    assert text == "".join(DEFAULT_CONTENT)

    create = {"model": "normal", "input": "hi", "stream": True}
    async with client.stream("POST", "/v1/responses", json=create, headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        responses = [e for e in await read_events(r) if e.data is not None]
    assert responses[-1].event == "response.completed"
    deltas = [json.loads(e.data or "{}")["delta"] for e in responses if e.event == "response.output_text.delta"]
    assert "".join(deltas) == "".join(DEFAULT_CONTENT)
