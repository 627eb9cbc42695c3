"""The official openai SDK pointed at the gateway: the contract seen by a real OpenAI client (API.md 1, 4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam

from tests.conftest import ServerThread
from tests.helpers.fake_provider import DEFAULT_CONTENT, TOOL_NAME, FakeProvider

HELLO = "Hello, world! This is the fake provider."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
async def sdk(gateway: ServerThread) -> AsyncIterator[AsyncOpenAI]:
    # 10 s bounds every call; the slowest case (hang) ends at its 1.5 s deadline.
    client = AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=10)
    async with client:
        yield client


async def collect(stream: AsyncIterator[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def call(sdk: AsyncOpenAI, model: str, stream: bool) -> None:
    """One request; a streamed one is read to the end so in-band errors surface too."""
    if stream:
        await collect(await sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    else:
        await sdk.chat.completions.create(model=model, messages=MESSAGES)


# ---- success -------------------------------------------------------------------------------------


async def test_create_returns_the_completion(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    completion = await sdk.chat.completions.create(model="normal", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == HELLO
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 10)
    assert fake.calls("normal") == 1


async def test_create_with_raw_response_has_headers(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(model="normal", messages=MESSAGES)
    assert raw.http_response.status_code == 200
    assert raw.headers.get("x-request-id")
    assert raw.parse().choices[0].message.content == HELLO


async def test_stream_concatenates_to_the_content(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    chunks = await collect(await sdk.chat.completions.create(model="normal", messages=MESSAGES, stream=True))
    assert chunks
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert text_of(chunks) == HELLO
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks)
    record = fake.requests[-1]
    assert record.stream is True


async def test_stream_with_include_usage_ends_with_usage(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    stream = await sdk.chat.completions.create(
        model="normal", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)
    assert text_of(chunks) == HELLO
    last = chunks[-1]
    assert last.usage is not None
    assert last.usage.prompt_tokens == 7
    assert last.usage.completion_tokens == 10
    assert last.usage.total_tokens == 17
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_response_headers(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    async with sdk.chat.completions.with_streaming_response.create(
        model="normal", messages=MESSAGES, stream=True
    ) as response:
        assert response.http_response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers.get("x-stream-id")
        chunks = await collect(await response.parse())
    assert text_of(chunks) == HELLO


async def test_heartbeats_mid_stream_do_not_break_the_sdk(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    # "silent" pauses 1.0 s after two chunks and heartbeat_s is 0.2: several heartbeats come after
    # events with ids. Ended by a blank line, each reached the SDK as an event with empty data,
    # which it failed to decode as JSON.
    chunks = await collect(await sdk.chat.completions.create(model="silent", messages=MESSAGES, stream=True))
    assert text_of(chunks) == "".join(DEFAULT_CONTENT)


async def test_demo_model_streams(sdk: AsyncOpenAI) -> None:
    chunks = await collect(await sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True))
    text = text_of(chunks)
    assert text
    assert "demo" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1


async def test_demo_model_json(sdk: AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model="demo", messages=MESSAGES)
    assert "demo" in (completion.choices[0].message.content or "")


async def test_tool_call_deltas_reassemble(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    stream = await sdk.chat.completions.create(model="tools", messages=MESSAGES, tools=[WEATHER_TOOL], stream=True)
    chunks = await collect(stream)
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    ids: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.id:
                    ids[delta.index] = delta.id
                if delta.function and delta.function.name:
                    names[delta.index] = names.get(delta.index, "") + delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments
    assert names == {0: TOOL_NAME}
    assert arguments == {0: '{"city": "Paris"}'}
    assert ids.get(0)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert fake.requests[-1].body.get("tools"), "tools must pass through to the provider"


async def test_tool_call_json(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    completion = await sdk.chat.completions.create(model="tools", messages=MESSAGES, tools=[WEATHER_TOOL])
    tool_calls = completion.choices[0].message.tool_calls
    assert tool_calls is not None and len(tool_calls) == 1
    tool_call = tool_calls[0]
    assert isinstance(tool_call, ChatCompletionMessageFunctionToolCall)
    assert tool_call.function.name == TOOL_NAME
    assert tool_call.function.arguments == '{"city": "Paris"}'
    assert completion.choices[0].finish_reason == "tool_calls"


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_context_length_is_bad_request(sdk: AsyncOpenAI, fake: FakeProvider, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await call(sdk, "context_length", stream)
    assert info.value.status_code == 400
    assert info.value.code == "context_length_exceeded"
    assert info.value.type == "invalid_request_error"
    assert "8192" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
async def test_provider_bad_request_is_bad_request(sdk: AsyncOpenAI, fake: FakeProvider, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await call(sdk, "bad_request", stream)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.code == "invalid_value"
    assert "temperature" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "code"), [("unauthorized", "upstream_authentication"), ("not_found", "upstream_model_not_found")]
)
async def test_provider_rejecting_the_gateway_is_502(
    sdk: AsyncOpenAI, fake: FakeProvider, model: str, code: str, stream: bool
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await call(sdk, model, stream)
    assert isinstance(info.value, openai.InternalServerError)
    assert info.value.status_code == 502
    assert info.value.type == "upstream_error"
    assert info.value.code == code
    assert "sk-fake" not in info.value.message, "the provider's key must not leak to clients"


@pytest.mark.parametrize("stream", [False, True])
async def test_rate_limited_keeps_retry_after(sdk: AsyncOpenAI, fake: FakeProvider, stream: bool) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await call(sdk, "rate_limited", stream)
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "rate_limit_error"
    assert info.value.response.headers.get("retry-after") == "7"
    assert fake.calls("rate_limited") == 1, "max_retries=0: the SDK must not have retried"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["server_error", "overloaded"])
async def test_provider_failure_is_503(sdk: AsyncOpenAI, fake: FakeProvider, model: str, stream: bool) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        await call(sdk, model, stream)
    assert info.value.status_code == 503
    assert info.value.type == "upstream_error"
    assert info.value.code == "upstream_overloaded"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["nope", "openai/gpt-4o-mini"])
async def test_unknown_model_is_not_found(sdk: AsyncOpenAI, fake: FakeProvider, model: str, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await call(sdk, model, stream)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert fake.calls() == 0


async def test_hang_json_is_504(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await call(sdk, "hang", stream=False)
    assert info.value.status_code == 504
    assert info.value.type == "timeout_error"
    assert info.value.code == "upstream_timeout"


async def test_hang_stream_ends_with_in_band_timeout(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    # Past the status window the headers are out (200), so the timeout arrives as `event: error`.
    stream = await sdk.chat.completions.create(model="hang", messages=MESSAGES, stream=True)
    chunks: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            chunks.append(chunk)
    assert not isinstance(info.value, openai.APIStatusError)
    assert not chunks
    assert info.value.type == "timeout_error"
    assert info.value.code == "upstream_timeout"


async def test_sdk_still_works_after_errors(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    completion = await sdk.chat.completions.create(model="normal", messages=MESSAGES)
    assert completion.choices[0].message.content == HELLO
