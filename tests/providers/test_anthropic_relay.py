"""The relay in Anthropic's API: which deployments take it, what it sends, and how Anthropic's
events and message objects become the chat chunks the gateway reads (and, through the Messages
route's own translation, the same Anthropic events and message again)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.api.messages.events import MessageEvents, message_object
from app.config.settings import DeploymentSettings
from app.domain.chat_request import NativeRequest
from app.domain.chunks import Chunk, Item
from app.domain.errors import (
    ContextLengthExceeded,
    ProviderRejected,
    RateLimited,
    UpstreamAuthentication,
    UpstreamOverloaded,
    UpstreamUnavailable,
)
from app.providers.anthropic_chunks import StreamReader, completion_of, error_from_reply
from app.providers.anthropic_relay import AnthropicRelay, AnthropicStream
from app.providers.anthropic_target import anthropic_body, messages_url, resolve_anthropic_target
from app.providers.chunks import read_chunk
from app.providers.relay import MAX_EVENT_BYTES

#: Anthropic's own events for an answer with interleaved thinking (signed), a redacted thinking
#: block, text, a tool call and prompt-cache usage, as its API streams them (pings included).
RECORDED: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 472,
                "cache_creation_input_tokens": 1024,
                "cache_read_input_tokens": 2048,
                "output_tokens": 2,
            },
        },
    },
    {"type": "ping"},
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": 'think: "é"\n'}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1g=="}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "EmwKAhgBEgy3"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "I'll check "}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "the weather."}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "content_block_start",
        "index": 3,
        "content_block": {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {},
        },
    },
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '{"location":'}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ' "Paris"}'}},
    {"type": "content_block_stop", "index": 3},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 89},
    },
    {"type": "message_stop"},
]


def sse(events: list[dict[str, Any]], newline: str = "\n") -> bytes:
    return "".join(f"event: {e['type']}{newline}data: {json.dumps(e)}{newline}{newline}" for e in events).encode()


def read_all(events: list[dict[str, Any]]) -> list[Item]:
    reader = StreamReader()
    items: list[Item] = []
    for event in events:
        item = reader.read(json.dumps(event).encode())
        if item is not False:
            items.append(item)
    return items


def test_the_recorded_events_become_chat_chunks() -> None:
    items = read_all(RECORDED)
    assert items[-1] is None  # message_stop: the end
    chunks = [item for item in items[:-1] if isinstance(item, Chunk)]
    assert len(chunks) == len(items) - 1
    data = [json.loads(c.raw) for c in chunks]
    assert all(d["object"] == "chat.completion.chunk" and d["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL" for d in data)
    deltas = [d["choices"][0]["delta"] for d in data]
    assert deltas[0] == {"role": "assistant", "content": ""}  # message_start
    assert deltas[1] == {"reasoning_content": "Let me "}
    assert deltas[3] == {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "EqQBCgIYAhIM1g=="}]}
    assert deltas[4] == {"thinking_blocks": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3"}]}
    assert "".join(d.get("content") or "" for d in deltas) == "I'll check the weather."
    calls = [call for d in deltas for call in d.get("tool_calls", ())]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert "".join(c["function"]["arguments"] for c in calls) == '{"location": "Paris"}'
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (3544, 89)
    assert data[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 2048}
    # Text, reasoning and tool calls are content (first token, output estimate); the start,
    # signatures and redacted thinking are not, as on every path that reads chat chunks.
    assert [c.has_content for c in chunks] == [i not in (0, 3, 4, len(chunks) - 1) for i in range(len(chunks))]
    assert all(c.tokens >= 1 for c in chunks if c.has_content)


@pytest.mark.parametrize(
    ("reported", "searches"),
    [
        ({"web_search_requests": 3}, 3),
        ({"web_search_requests": 10**400}, 10_000),  # garbage: capped, never a number too large to price
        ({"web_search_requests": 1.5}, 0),
        ("three", 0),
        ([3], 0),
        (None, 0),
    ],
)
def test_web_searches_are_read_whatever_shape_the_provider_gives_them(reported: Any, searches: int) -> None:
    """A count of web searches in the usage is charged; any other shape of the field counts none and
    never fails the stream (it was not read at all before searches were charged)."""
    events = [e for e in RECORDED if e["type"] != "message_delta"]
    delta = next(e for e in RECORDED if e["type"] == "message_delta")
    delta = {**delta, "usage": {**delta["usage"], "server_tool_use": reported}}
    items = read_all([*events[:-1], delta, events[-1]])
    last = next(item for item in reversed(items) if isinstance(item, Chunk))
    assert last.usage is not None and last.usage.web_searches == searches
    usage = json.loads(last.raw)["usage"]
    assert usage.get("server_tool_use") == ({"web_search_requests": searches} if searches else None)
    # The chat chunk's usage read back (the LiteLLM path's shape) counts the same.
    assert read_chunk(last.raw).usage == last.usage
    odd = read_chunk(b'{"choices":[],"usage":{"prompt_tokens":1,"server_tool_use":%b}}' % json.dumps(reported).encode())
    assert odd.usage is not None and odd.usage.web_searches == searches


def test_the_messages_route_gives_the_recorded_events_back() -> None:
    """Anthropic's events -> chat chunks -> ``MessageEvents``: the same blocks and deltas, the same
    stop reason and Anthropic's own usage numbers."""
    events = MessageEvents("msg_gateway", "claude", 10)
    out: list[Chunk] = []
    for item in read_all(RECORDED)[:-1]:
        assert isinstance(item, Chunk)
        events.feed_into(item, out)
    out.extend(events.finish())
    given = [json.loads(c.raw) for c in out]
    assert given[0]["type"] == "message_start" and given[-1] == {"type": "message_stop"}
    expected = [
        e
        for e in RECORDED[1:-2]
        if e["type"] != "ping" and e.get("delta", {}).get("partial_json") != ""
        # MessageEvents writes each delta as it comes: the same thinking text, in the same pieces.
    ]
    assert given[1:-2] == expected
    usage = RECORDED[0]["message"]["usage"]
    assert given[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {**usage, "output_tokens": 89},
    }


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_the_stream_splits_events_across_reads(newline: str) -> None:
    stream = AnthropicStream(AnthropicRelay({}), _input(), "d")
    raw = sse(RECORDED, newline)
    items: list[Item] = []
    for at in range(0, len(raw), 7):  # reads that cut events, lines and CRLFs anywhere
        items.extend(stream._split(raw[at : at + 7]))
    assert items[-1] is None
    whole = read_all(RECORDED)
    assert len(items) == len(whole)
    assert [_choices(c) for c in items[:-1]] == [_choices(c) for c in whole[:-1]]


def _choices(item: Item) -> Any:
    assert isinstance(item, Chunk)
    data = json.loads(item.raw)
    return data["choices"], data.get("usage")


def test_an_event_that_never_ends_is_refused() -> None:
    stream = AnthropicStream(AnthropicRelay({}), _input(), "d")
    items = stream._split(b"event: content_block_delta\ndata: " + b"x" * (MAX_EVENT_BYTES + 1))
    assert len(items) == 1 and isinstance(items[0], UpstreamUnavailable)


def test_a_stop_sequence_and_anthropic_only_stop_reasons() -> None:
    stop = {"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"}}
    (chunk,) = read_all([stop])
    assert isinstance(chunk, Chunk) and chunk.finish_reason == "stop"
    assert json.loads(chunk.raw)["choices"][0]["stop_reason"] == "END"
    events = MessageEvents("m", "claude", 1, ["END"])
    events.feed(chunk)
    delta = json.loads(events.finish()[0].raw)["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    pause = {"type": "message_delta", "delta": {"stop_reason": "pause_turn", "stop_sequence": None}}
    (chunk,) = read_all([pause])
    events = MessageEvents("m", "claude", 1)
    events.feed(chunk)  # type: ignore[arg-type]
    assert json.loads(events.finish()[0].raw)["delta"]["stop_reason"] == "pause_turn"


def test_error_events() -> None:
    overloaded, failed, odd = read_all(
        [
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
            {"type": "error", "error": "just words"},
        ]
    )
    assert isinstance(overloaded, UpstreamOverloaded)
    assert isinstance(failed, UpstreamUnavailable) and "Internal server error" in failed.message
    assert isinstance(odd, UpstreamUnavailable)
    (unreadable,) = read_all([{"type": "content_block_delta", "index": "zero"}])
    assert isinstance(unreadable, UpstreamUnavailable)


def _reply(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def test_error_replies() -> None:
    assert isinstance(error_from_reply(529, _reply("overloaded_error", "Overloaded"), {}), UpstreamOverloaded)
    limited = error_from_reply(429, _reply("rate_limit_error", "slow down"), {"retry-after": "3"})
    assert isinstance(limited, RateLimited) and limited.retry_after == 3
    assert isinstance(
        error_from_reply(401, _reply("authentication_error", "invalid x-api-key"), {}), UpstreamAuthentication
    )
    too_long = _reply("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
    assert isinstance(error_from_reply(400, too_long, {}), ContextLengthExceeded)
    rejected = error_from_reply(400, _reply("invalid_request_error", "max_tokens: bad"), {})
    assert isinstance(rejected, ProviderRejected) and "max_tokens" in rejected.message
    assert isinstance(error_from_reply(502, b"<html>bad gateway</html>", {}), UpstreamOverloaded)


def test_a_message_object_becomes_a_completion_and_back() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 5,
            "output_tokens": 7,
            "cache_creation_input_tokens": 11,
            "cache_read_input_tokens": 13,
        },
    }
    completion = completion_of(json.dumps(message).encode())
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        29,
        7,
    )
    choice = json.loads(completion.raw)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}
    ]
    given = json.loads(message_object(completion.raw, "msg_gw", "claude", 1))
    assert given["content"] == message["content"][:4]
    assert (given["stop_reason"], given["stop_sequence"]) == ("tool_use", None)
    assert given["usage"] == message["usage"]
    stopped = {
        **message,
        "content": [{"type": "text", "text": "a"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
    }
    given = json.loads(message_object(completion_of(json.dumps(stopped).encode()).raw, "m", "claude", 1, ["END"]))
    assert (given["stop_reason"], given["stop_sequence"]) == ("stop_sequence", "END")


def test_an_answer_that_is_no_message_is_refused() -> None:
    with pytest.raises(UpstreamUnavailable):
        completion_of(b"[1, 2]")
    with pytest.raises(UpstreamUnavailable):
        completion_of(b"not json")


# -- the target -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("litellm_model", "fast_path", "native"),
    [
        ("anthropic/claude-sonnet-4-5", True, True),
        ("anthropic/claude-sonnet-4-5", False, False),
        ("openai/gpt-4o-mini", True, False),
        ("bedrock/anthropic.claude-3", True, False),
    ],
)
def test_which_deployments_take_it(litellm_model: str, fast_path: bool, native: bool) -> None:
    dep = DeploymentSettings(name="m", litellm_model=litellm_model, fast_path=fast_path)
    assert (resolve_anthropic_target(dep, {}) is not None) is native


def test_the_target_and_body() -> None:
    dep = DeploymentSettings(name="m", litellm_model="anthropic/claude-sonnet-4-5", api_key_env="K")
    target = resolve_anthropic_target(dep, {"K": "sk-ant-1"})
    assert target is not None
    assert str(target.url) == "https://api.anthropic.com/v1/messages"
    head = target.request.head.decode("latin-1").split("\r\n")
    assert head[0] == "POST /v1/messages HTTP/1.1" and "Host: api.anthropic.com" in head
    assert {"x-api-key: sk-ant-1", "anthropic-version: 2023-06-01", "accept-encoding: identity"} <= set(head)
    # Without api_key_env, the key LiteLLM would have read.
    default = resolve_anthropic_target(
        DeploymentSettings(name="m", litellm_model="anthropic/c"), {"ANTHROPIC_API_KEY": "k2"}
    )
    assert default is not None and default.headers["x-api-key"] == "k2"
    native = NativeRequest(body={"model": "claude", "max_tokens": 5, "stream": False, "messages": []}, headers={})
    assert json.loads(anthropic_body(target, native, stream=True)) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 5,
        "stream": True,
        "messages": [],
    }
    assert messages_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/v1/messages"
    assert messages_url("https://proxy.example/anthropic/v1/messages") == "https://proxy.example/anthropic/v1/messages"


def _input() -> Any:
    from app.api.messages.request import native_request, parse_messages_body, to_chat_body, to_chat_input

    parsed, body = parse_messages_body(b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}')
    chat = to_chat_body(parsed, body, passthrough=True, stream=True)
    return to_chat_input(chat, None, native_request(body, {}))
