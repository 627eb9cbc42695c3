"""The Messages API through the Anthropic Python SDK and raw HTTP, on both provider paths
(the relay and LiteLLM), against the OpenAI-wire fake provider."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic

from app.api.messages.request import IMAGES_FOLLOW, IMAGES_OF
from app.config.settings import settings_from_dict
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_provider import TOOL_NAME, FakeProvider

HELLO = "Hello, world! This is the fake provider."
WEATHER: Any = {
    "name": TOOL_NAME,
    "description": "Current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
async def sdk(gateway: ServerThread) -> AsyncIterator[AsyncAnthropic]:
    client = AsyncAnthropic(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=10)
    async with client:
        yield client


def events_of(body: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) per SSE event of a Messages stream."""
    out = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        out.append((fields.get("event", ""), fields.get("id"), json.loads(fields["data"])))
    return out


# ---- JSON and SSE through the SDK ----------------------------------------------------------------


async def test_create_returns_the_message(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    message = await sdk.messages.create(model="normal", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "normal"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == HELLO  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 10
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    sent = fake.requests[-1].body
    assert sent["messages"] == [{"role": "user", "content": "hi"}] and sent["max_tokens"] == 100


async def test_stream_helpers_give_the_text_and_final_message(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    async with sdk.messages.stream(
        model="normal", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == HELLO
    assert final.content[0].text == HELLO  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 10 and final.usage.input_tokens == 7
    sent = fake.requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["stream"] is True


async def test_tool_use_round_trip(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    async with sdk.messages.stream(
        model="tools", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}]
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == TOOL_NAME and call.input == {"city": "Paris"}
    sent = fake.requests[-1].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": TOOL_NAME,
                "parameters": WEATHER["input_schema"],
                "description": WEATHER["description"],
            },
        }
    ]
    answer = await sdk.messages.create(
        model="normal",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}]},
        ],
    )
    assert answer.content[0].text == HELLO  # type: ignore[union-attr]
    sent = fake.requests[-1].body
    assert sent["messages"][1]["tool_calls"] == [
        {"id": call.id, "type": "function", "function": {"name": TOOL_NAME, "arguments": '{"city":"Paris"}'}}
    ]
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}


async def test_json_tool_use_and_tool_choice(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    message = await sdk.messages.create(
        model="tools",
        max_tokens=50,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": TOOL_NAME, "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        extra_body={"top_k": 5},
        messages=[{"role": "user", "content": "Weather?"}],
    )
    assert message.stop_reason == "tool_use"
    assert message.content[-1].type == "tool_use" and message.content[-1].input == {"city": "Paris"}
    sent = fake.requests[-1].body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": TOOL_NAME}}
    assert sent["parallel_tool_calls"] is False and sent["stop"] == ["END"]
    assert "top_k" not in sent  # an Anthropic control: not for an OpenAI-wire provider


async def test_reasoning_becomes_a_thinking_block(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    async with sdk.messages.stream(
        model="reasoning", max_tokens=100, messages=[{"role": "user", "content": "think"}]
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    assert final.content[1].text == "The answer."  # type: ignore[union-attr]


async def test_a_stop_sequence_the_provider_names_is_the_stop_reason(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    """A provider that names the stop sequence it stopped on (vLLM's ``stop_reason``): Anthropic's
    ``stop_sequence`` stop reason with that sequence, JSON and streamed, on the relay and LiteLLM alike."""
    asked: Any = {"max_tokens": 100, "messages": [{"role": "user", "content": "count"}], "stop_sequences": [" 4", "5"]}
    message = await sdk.messages.create(model="stops_on_sequence", **asked)
    async with sdk.messages.stream(model="stops_on_sequence", **asked) as stream:
        final = await stream.get_final_message()
    assert fake.requests[-1].body["stop"] == [" 4", "5"]
    for answer in (message, final):
        assert answer.content[0].text == "Counting: 1, 2, 3"  # type: ignore[union-attr]
        assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", " 4")


async def test_without_the_provider_naming_it_a_stop_is_end_turn(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    """OpenAI's wire says ``stop`` for a natural end and a matched sequence alike: never a guess."""
    asked: Any = {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], "stop_sequences": ["!"]}
    message = await sdk.messages.create(model="normal", **asked)
    async with sdk.messages.stream(model="normal", **asked) as stream:
        final = await stream.get_final_message()
    for answer in (message, final):
        assert (answer.stop_reason, answer.stop_sequence) == ("end_turn", None)


async def test_images_base64_and_url_are_content_parts(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    await sdk.messages.create(
        model="normal",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    parts = fake.requests[-1].body["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What is this?"},
    ]


async def test_a_tool_results_images_follow_it_in_a_user_message(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    """OpenAI's tool messages take text only: a screenshot a tool returned (Claude Code reading an image)
    goes to a user message right after the tool results, the text stays in the tool message."""
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    call = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.png"}}
    shot = {"type": "tool_use", "id": "toolu_2", "name": "Shot", "input": {}}
    await sdk.messages.create(
        model="normal",
        max_tokens=10,
        messages=[
            {"role": "user", "content": "look"},
            {"role": "assistant", "content": [call, shot]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "a.png:"}, png],
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [png]},
                    {"type": "text", "text": "What is it?"},
                ],
            },
        ],
    )
    sent = fake.requests[-1].body["messages"]
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": f"a.png:\n{IMAGES_FOLLOW}"}
    assert sent[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": IMAGES_FOLLOW}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}

    def of(call: str) -> dict[str, str]:
        return {"type": "text", "text": f"{IMAGES_OF} {call}:"}

    assert sent[4] == {
        "role": "user",
        "content": [of("toolu_1"), image, of("toolu_2"), image, {"type": "text", "text": "What is it?"}],
    }
    assert len(sent) == 5


async def test_a_turn_that_only_thought_keeps_its_place_with_empty_text(
    sdk: AsyncAnthropic, fake: FakeProvider
) -> None:
    """Its thinking is Anthropic's only; OpenAI refuses an assistant message with neither content nor
    tool calls, so the turn goes as an empty text (turns still alternate)."""
    await sdk.messages.create(
        model="normal",
        max_tokens=10,
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]},
            {"role": "user", "content": "again"},
        ],
    )
    sent = fake.requests[-1].body["messages"]
    assert sent == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
    ]


async def test_count_tokens_makes_no_provider_call(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    counted = await sdk.messages.count_tokens(
        model="normal", messages=[{"role": "user", "content": "hello there, how are you?"}], tools=[WEATHER]
    )
    assert counted.input_tokens > 5
    assert fake.calls() == 0


async def test_count_tokens_never_fetches_an_image_url(sdk: AsyncAnthropic, fake: FakeProvider) -> None:
    """An image by URL counts as a fixed number of tokens; the URL (a local listener here) is never read."""
    accepted: list[object] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(60):  # about 3 s, then the listener closes
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    watcher = threading.Thread(target=serve, daemon=True)
    watcher.start()
    try:
        image = {"type": "image", "source": {"type": "url", "url": f"http://127.0.0.1:{port}/cat.png"}}
        counted = await sdk.messages.count_tokens(
            model="normal", messages=[{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}]
        )
        assert counted.input_tokens > 0
    finally:
        watcher.join(5)
        listener.close()
    assert accepted == [] and fake.calls() == 0


# ---- errors: the SDK's own exception classes -----------------------------------------------------


@pytest.mark.parametrize(
    ("model", "exception", "status"),
    [
        ("no-such-model", anthropic.NotFoundError, 404),
        ("rate_limited", anthropic.RateLimitError, 429),
        ("overloaded", anthropic.OverloadedError, 529),
        ("bad_request", anthropic.BadRequestError, 400),
        ("unauthorized", anthropic.InternalServerError, 502),  # the provider refused the gateway's key
        ("server_error", anthropic.OverloadedError, 529),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_errors_raise_the_sdk_exception(
    sdk: AsyncAnthropic, fake: FakeProvider, model: str, exception: type[Exception], status: int, stream: bool
) -> None:
    with pytest.raises(exception) as caught:
        if stream:
            async with sdk.messages.stream(
                model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            ) as s:
                await s.get_final_message()
        else:
            await sdk.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    error = caught.value
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == status
    assert error.body["type"] == "error"  # type: ignore[index]
    assert error.request_id  # the request-id header


@pytest.fixture(scope="module")
def keyed_gateway(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    environ = {"MSG_TEST_KEYS": "sk-msg-good"}
    data = settings_dict(fake_provider.base_url, server={"api_keys_env": "MSG_TEST_KEYS"})
    # A model the catalogue says reasons: `thinking` reaches it as a reasoning effort.
    data["models"]["deployments"].append(
        {
            "name": "thinker",
            "litellm_model": "openai/normal",
            "api_base": fake_provider.base_url,
            "info": {"capabilities": ["reasoning", "tools"]},
        }
    )
    settings = settings_from_dict(data, environ)
    server = ServerThread(settings, environ=environ).start()
    yield server
    server.stop()


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
async def test_gateway_key_as_x_api_key_or_bearer(keyed_gateway: ServerThread, fake: FakeProvider, auth: str) -> None:
    args: dict[str, Any] = {"api_key": "sk-msg-good"} if auth == "x-api-key" else {"auth_token": "sk-msg-good"}
    async with AsyncAnthropic(base_url=keyed_gateway.base_url, max_retries=0, timeout=10, **args) as client:
        message = await client.messages.create(
            model="normal", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].text == HELLO  # type: ignore[union-attr]


async def test_wrong_key_is_the_sdk_authentication_error(keyed_gateway: ServerThread, fake: FakeProvider) -> None:
    async with AsyncAnthropic(base_url=keyed_gateway.base_url, api_key="sk-wrong", max_retries=0, timeout=10) as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(model="normal", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": caught.value.body["error"]["message"]},
    }  # type: ignore[index]
    assert fake.calls() == 0


# ---- raw HTTP: framing, ping, resume ---------------------------------------------------------------


async def test_sse_events_carry_ids_and_follow_anthropics_order(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    body = {"model": "normal", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    sid = response.headers["x-stream-id"]
    assert response.headers["request-id"] == response.headers["x-request-id"]
    events = events_of(response.text)
    names = [e[0] for e in events]
    assert names[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert [e[1] for e in events] == [f"{sid}:{n}" for n in range(1, len(events) + 1)]
    assert all(e[0] == e[2]["type"] for e in events)
    assert events[-2][2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][2]["usage"]["output_tokens"] == 10


async def test_ping_while_the_provider_is_silent(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    body = {"model": "slower_first", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200
    assert response.text.startswith('event: ping\ndata: {"type": "ping"}\n\n')
    assert events_of(response.text)[-1][0] == "message_stop"


async def test_resume_replays_the_anthropic_events_byte_for_byte(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    body = {"model": "normal", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/messages", json=body)
    sid = response.headers["x-stream-id"]
    original = response.content
    replayed = await client.get(f"/v1/chat/completions/streams/{sid}", headers={"Last-Event-ID": f"{sid}:3"})
    assert replayed.status_code == 200
    start = original.index(f"id: {sid}:4\n".encode())
    start = original.rindex(b"event: ", 0, start)
    assert replayed.content == original[start:]
    whole = await client.get(f"/v1/chat/completions/streams/{sid}")
    assert whole.content == original


async def test_in_band_error_after_the_first_event(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    body = {"model": "drop", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200
    last = events_of(response.text)[-1]
    assert last[0] == "error"
    assert last[2] == {"type": "error", "error": {"type": "api_error", "message": last[2]["error"]["message"]}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "normal", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        (
            {"model": "normal", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "nope"}]}]},
            "messages[0].content[0]",
        ),
        ({"model": "normal", "max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        (
            {
                "model": "normal",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "x"}],
            },
            "tools[0].input_schema",
        ),
        (
            {
                "model": "normal",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tool_choice": {"type": "maybe"},
            },
            "tool_choice",
        ),
        (
            {
                "model": "normal",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "api_base": "http://x",
            },
            "api_base",
        ),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"]


async def test_unsupported_content_type_and_bad_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = await client.post("/v1/messages", content=b"hi", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["type"] == "error"


def claude_code_shaped() -> dict[str, Any]:
    """The shape of a Claude Code 2.1 turn (captured from Claude Code 2.1.197; contents made up)."""
    ephemeral = {"type": "ephemeral"}
    tools = [
        {
            "name": f"Tool{i}",
            "description": f"Tool number {i}.",
            "input_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"command": {"type": "string", "description": "What to run."}},
                "required": ["command"],
                "additionalProperties": False,
            },
        }
        for i in range(20)
    ]
    return {
        "model": "normal",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are a CLI agent."},
            {"type": "text", "text": "Be careful.", "cache_control": ephemeral},
            {"type": "text", "text": "Long instructions. " * 200, "cache_control": ephemeral},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                    {"type": "text", "text": "say pong", "cache_control": ephemeral},
                ],
            },
            {"role": "system", "content": "Available agent types: ..."},
        ],
        "tools": tools,
        "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s"})},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    }


BETAS_7 = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
    "context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
    "effort-2025-11-24"
)


async def test_a_claude_code_turn_works_on_an_openai_wire_model(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    headers = {"anthropic-beta": BETAS_7, "anthropic-version": "2023-06-01", "x-api-key": "unused"}
    response = await client.post("/v1/messages?beta=true", json=claude_code_shaped(), headers=headers)
    assert response.status_code == 200, response.text
    text = "".join(e[2]["delta"]["text"] for e in events_of(response.text) if e[0] == "content_block_delta")
    assert text == HELLO
    record = fake.requests[-1]
    sent = record.body
    for field in ("thinking", "context_management", "output_config", "metadata", "system", "top_k"):
        assert field not in sent
    assert "anthropic-beta" not in record.headers
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
    assert sent["messages"][0]["content"].startswith("You are a CLI agent.\n\nBe careful.")
    assert [p["text"] for p in sent["messages"][1]["content"]][1] == "say pong"
    assert all("cache_control" not in p for p in sent["messages"][1]["content"])
    assert len(sent["tools"]) == 20 and sent["tools"][0]["function"]["name"] == "Tool0"
    assert sent["max_tokens"] == 32000


async def test_delete_stops_a_messages_stream_in_band(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    body = {"model": "slow_gap", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.stream("POST", "/v1/messages", json=body) as response:
        sid = response.headers["x-stream-id"]
        received = b""
        pieces = response.aiter_bytes()
        async for piece in pieces:
            received += piece
            if b"content_block_delta" in received and received.endswith(b"\n\n"):
                break
        stopped = await client.delete(f"/v1/chat/completions/streams/{sid}")
        assert stopped.status_code == 204
        async for piece in pieces:
            received += piece
    last = events_of(received.decode())[-1]
    assert last[0] == "error"
    assert last[2]["error"]["type"] == "invalid_request_error" and "cancelled" in last[2]["error"]["message"]
    assert b"message_stop" not in received


@pytest.mark.parametrize(
    ("thinking", "output_config", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 6000}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 20000}, None, "high"),
        ({"type": "adaptive", "display": "omitted"}, {"effort": "high"}, "high"),
        ({"type": "disabled"}, None, None),
    ],
)
async def test_thinking_becomes_a_reasoning_effort_where_the_model_has_one(
    keyed_gateway: ServerThread,
    fake: FakeProvider,
    thinking: dict[str, Any],
    output_config: dict[str, Any] | None,
    effort: str | None,
) -> None:
    body: dict[str, Any] = {"model": "thinker", "max_tokens": 30000, "thinking": thinking}
    body["messages"] = [{"role": "user", "content": "hi"}]
    if output_config is not None:
        body["output_config"] = output_config
    async with httpx.AsyncClient(base_url=keyed_gateway.base_url, timeout=10) as http:
        response = await http.post("/v1/messages", json=body, headers={"x-api-key": "sk-msg-good"})
        assert response.status_code == 200, response.text
        sent = fake.requests[-1].body
        assert sent.get("reasoning_effort") == effort
        assert "thinking" not in sent and "output_config" not in sent
        # A model without the capability gets no effort at all.
        response = await http.post(
            "/v1/messages", json={**body, "model": "normal"}, headers={"x-api-key": "sk-msg-good"}
        )
        assert response.status_code == 200
        assert "reasoning_effort" not in fake.requests[-1].body
