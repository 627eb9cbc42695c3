"""SSE streaming under real uvicorn: framing, flushing, heartbeats, status window, in-band errors."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest

from tests.conftest import ServerThread
from tests.helpers.fake_provider import DEFAULT_CONTENT, FakeProvider
from tests.helpers.sse import chat_body, post_raw, read_to_done, stream_chat

pytestmark = pytest.mark.usefixtures("gateway")


async def test_sse_framing_ids_and_done(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("normal", stream=True))
    assert result.status == 200
    assert result.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in result.headers
    stream_id = result.headers["x-stream-id"]
    events = result.data_events
    assert [e.id for e in events] == [f"{stream_id}:{i}" for i in range(1, len(events) + 1)]
    assert events[-1].data == "[DONE]"
    assert all(e.json()["object"] == "chat.completion.chunk" for e in events[:-1])
    assert result.content() == "Hello, world! This is the fake provider."
    assert fake.calls("normal") == 1


async def test_events_flush_one_at_a_time(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    # The fake sends a chunk every 50 ms; a buffering relay would deliver them in one burst.
    result = await stream_chat(client, chat_body("paced", stream=True))
    times = [e.at for e in result.data_events if e.data != "[DONE]"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 9
    assert sum(1 for g in gaps if g >= 0.025) >= len(gaps) - 3, gaps
    assert times[-1] - times[0] >= 0.3


async def test_no_compression_on_sse_even_when_asked(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("long", stream=True), headers={"Accept-Encoding": "gzip, br"})
    assert result.status == 200
    assert "content-encoding" not in result.headers
    assert result.data_events[-1].data == "[DONE]"


async def test_large_json_is_compressed(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat_body("long"), headers={"Accept-Encoding": "gzip, br"}
    )
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["object"] == "chat.completion"
    small = await client.post("/v1/chat/completions", json=chat_body("normal"), headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers


@pytest.mark.parametrize(
    ("body_stream", "accept", "expect_sse"),
    [
        (True, None, True),
        (None, "text/event-stream", True),
        (None, "application/json, text/event-stream;q=0.5", True),
        (None, "text/event-stream;q=0", False),
        (False, "text/event-stream", False),
        (None, None, False),
        (None, "application/json", False),
    ],
)
async def test_streaming_intent(
    client: httpx.AsyncClient, fake: FakeProvider, body_stream: bool | None, accept: str | None, expect_sse: bool
) -> None:
    body = chat_body("normal")
    if body_stream is not None:
        body["stream"] = body_stream
    headers = {"Accept": accept} if accept else {}
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200
    if expect_sse:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.headers["content-type"] == "application/json"
        assert response.json()["object"] == "chat.completion"


async def test_api_alias_path_streams(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    async with client.stream("POST", "/api/chat/completions", json=chat_body("normal", stream=True)) as response:
        assert response.status_code == 200
        text = (await response.aread()).decode()
    assert text.rstrip().endswith("data: [DONE]")


async def test_usage_chunk_with_include_usage(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("normal", stream=True, stream_options={"include_usage": True}))
    last_chunk = result.data_events[-2].json()
    assert last_chunk["usage"]["prompt_tokens"] == 7
    assert last_chunk["usage"]["completion_tokens"] == 10
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}


async def test_unknown_fields_pass_through(
    client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread
) -> None:
    result = await stream_chat(
        client, chat_body("normal", stream=True, temperature=0.3, seed=42, vendor_x={"a": 1}, top_k=5, user="u-1")
    )
    assert result.status == 200
    seen = fake.requests[0].body
    assert seen["temperature"] == 0.3
    assert seen["seed"] == 42
    assert seen["vendor_x"] == {"a": 1}
    assert seen["top_k"] == 5
    if gateway.app.state.services.provider.path_of("normal-1") == "fast":
        assert seen["user"] == "u-1"  # LiteLLM's full path drops `user`; the relay keeps it


async def test_heartbeats_during_upstream_silence(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    # `silent` pauses 1.0 s after two chunks; heartbeat_s is 0.2 in the test config.
    result = await stream_chat(client, chat_body("silent", stream=True))
    assert result.status == 200
    assert len(result.comments) >= 3
    assert all(c.comment == "keep-alive" and c.data is None for c in result.comments)
    assert result.data_events[-1].data == "[DONE]"
    assert result.content() == "Hello, world! This is the fake provider."


async def test_slow_first_token_past_status_window(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    # 0.8 s to the first chunk, status window 0.3 s: headers go out first, heartbeats fill the wait.
    result = await stream_chat(client, chat_body("slower_first", stream=True))
    assert result.status == 200
    assert result.events[0].comment == "keep-alive"
    assert result.data_events[-1].data == "[DONE]"


ERRORS_BEFORE_FIRST_CHUNK = [
    ("context_length", 400, "invalid_request_error", "context_length_exceeded"),
    ("bad_request", 400, "invalid_request_error", "invalid_value"),
    ("unauthorized", 502, "upstream_error", "upstream_authentication"),
    ("not_found", 502, "upstream_error", "upstream_model_not_found"),
    ("rate_limited", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("server_error", 503, "upstream_error", "upstream_overloaded"),
    ("overloaded", 503, "upstream_error", "upstream_overloaded"),
]


@pytest.mark.parametrize(("model", "status", "type_", "code"), ERRORS_BEFORE_FIRST_CHUNK)
@pytest.mark.parametrize("stream", [True, False])
async def test_provider_errors_before_first_chunk_get_real_status(
    client: httpx.AsyncClient, fake: FakeProvider, model: str, status: int, type_: str, code: str, stream: bool
) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(model, stream=stream))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == (type_, code)
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]
    if status == 429:
        assert response.headers["retry-after"] == "7"


async def test_drop_mid_stream_is_in_band_error(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("drop", stream=True))
    assert result.error_in_band()["code"] == "upstream_unavailable"
    assert result.content() == "Hello,"


async def test_hang_gives_heartbeats_then_timeout_error(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("hang", stream=True))
    assert len(result.comments) >= 3
    error = result.error_in_band()
    assert (error["type"], error["code"]) == ("timeout_error", "upstream_timeout")


async def test_idle_timeout_mid_stream(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("silent_long", stream=True))
    assert result.content() == "Hello,"
    assert result.error_in_band()["code"] == "upstream_timeout"
    # The idle deadline closed the upstream call rather than leaving it running.
    record = fake.requests[0]
    await fake.await_end(record, timeout=3)
    assert record.completed_at is None or record.disconnected_at is not None


async def test_a_client_that_stops_reading_is_not_an_idle_provider(gateway: ServerThread) -> None:
    # 12 MB of stream, more than socket buffers hold: while the client does not read, the gateway
    # cannot write, stops reading the provider (back-pressure), and that time is not the provider's
    # silence. What the gateway holds for the client meanwhile stays near its socket's high-water
    # mark (the provider is not read, not buffered here; on the relay the stream is pushed,
    # app/core/push.py). After a pause longer than the idle timeout (1.5 s) the stream ends intact.
    body = b'{"model": "firehose_varied", "stream": true, "messages": [{"role": "user", "content": "go"}]}'
    reader, writer = await post_raw(gateway.port, body)
    received = await asyncio.wait_for(reader.read(65536), 5)
    assert received.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(2.5)  # the scenario itself: a client that reads nothing for a while

    async def largest_write_buffer() -> int:
        connections: Any = gateway.server.server_state.connections
        return max((c.transport.get_write_buffer_size() for c in connections if c.transport), default=0)

    held = await asyncio.to_thread(gateway.call, largest_write_buffer())
    async with asyncio.timeout(60):
        received = await read_to_done(reader, received)
    writer.close()
    assert held < 2 * 1024 * 1024, held  # of a 12 MB stream
    assert b"event: error" not in received
    assert received.count(b"y" * 4000) == 3000


async def _raw_http_chunks(port: int, body: bytes) -> list[bytes]:
    """The pieces of a chunked HTTP/1.1 response as the gateway wrote them: one per ``send``."""
    reader, writer = await post_raw(port, body)
    try:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
            pieces = []
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                pieces.append(await reader.readexactly(size))
                assert await reader.readexactly(2) == b"\r\n"
        return pieces
    finally:
        writer.close()


async def test_events_that_arrive_together_are_written_together(
    gateway: ServerThread, request: pytest.FixtureRequest
) -> None:
    # The provider sends its finish chunk, usage chunk and [DONE] in one write, the content chunks
    # 10 ms apart. The relay writes each group of events that arrived together in one send (one
    # piece of the chunked body), and every content chunk on its own, as it comes.
    body = (
        b'{"model": "tail_together", "stream": true, "stream_options": {"include_usage": true},'
        b' "messages": [{"role": "user", "content": "go"}]}'
    )
    pieces = await _raw_http_chunks(gateway.port, body)
    events = [event for piece in pieces for event in piece.split(b"\n\n") if event]
    assert events[-1].endswith(b"data: [DONE]") and b'"finish_reason":"stop"' in events[-3], events[-3:]
    content = [e for e in events if b'"content":' in e]
    assert len(content) == len(DEFAULT_CONTENT), events
    if request.node.callspec.params["gateway"] == "full":
        # LiteLLM's iterator hands its chunks over one at a time: nothing to group there.
        assert len(pieces) == len(events)
        return
    # Finish, usage and [DONE] in one write (with the last content chunk too, when the gateway read
    # it in the same read as them); apart, events go one write each (test_events_flush_one_at_a_time).
    assert pieces[-1].count(b"\n\n") >= 3, pieces[-1]
    assert len(pieces) <= len(events) - 2


async def test_a_chunk_is_not_held_for_a_usage_chunk_the_client_does_not_get(
    client: httpx.AsyncClient, fake: FakeProvider
) -> None:
    # Finish and usage chunks arrive together, [DONE] 0.5 s later. A client that did not ask for
    # usage never sees the usage chunk, so the finish chunk must not wait for what follows it.
    result = await stream_chat(client, chat_body("late_done", stream=True))
    events = result.data_events
    finish = next(e for e in events if e.data != "[DONE]" and e.json()["choices"][0].get("finish_reason"))
    assert events[-1].data == "[DONE]" and all(e.json()["choices"] for e in events[:-1])  # no usage-only chunk
    assert events[-1].at - finish.at >= 0.3, (finish.at, events[-1].at)


async def test_json_whole_call_deadline(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body("hang"))
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


async def test_fallback_deployment_serves_when_primary_fails(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body("with_fallback"))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world! This is the fake provider."


async def test_demo_model_streams_offline(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    result = await stream_chat(client, chat_body("demo", "ping", stream=True))
    assert result.status == 200
    assert "built-in demo model" in result.content()
    assert "You said `ping`" in result.content() and "| ping | 4 | 1 |" in result.content()
    assert len(result.data_events) > 20
    assert fake.calls() == 0
