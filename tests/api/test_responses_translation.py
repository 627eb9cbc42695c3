"""The Responses translation on its own (app/protocol/responses_*.py): chat chunks in, Responses
events out, every one validated against the openai SDK's types; and the request side's rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.api.responses.events import ResponseEvents, sse_frames
from app.api.responses.request import input_items, to_messages, translate_tool_choice, translate_tools
from app.api.responses.service import skeleton_of
from app.api.responses.wire import ResponsesCreate
from app.domain.errors import InvalidRequest, StreamCancelled, UpstreamUnavailable
from tests.helpers.responses_support import valid_event, valid_response


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    choices = [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    body: dict[str, Any] = {"object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def new_events(**create: Any) -> ResponseEvents:
    tools = translate_tools(create.get("tools"))
    skeleton = skeleton_of(ResponsesCreate(model="m", **create), "resp_" + "ab" * 16, tools.echo)
    return ResponseEvents(skeleton, tools.namespaces)


def run(events: ResponseEvents, chunks: list[bytes], error: Any = None) -> list[dict[str, Any]]:
    out = []
    for raw in chunks:
        out += events.feed(raw)
    out += events.finish(error)
    decoded = [json.loads(data) for _, _, data in out]
    for event in decoded:
        valid_event(event)
    assert [e["sequence_number"] for e in decoded] == list(range(len(decoded)))
    return decoded


def test_length_finish_is_an_incomplete_response() -> None:
    events = run(new_events(max_output_tokens=2), [chunk({"content": "Hi"}), chunk({}, "length")])
    assert events[-1]["type"] == "response.incomplete"
    response = valid_response(events[-1]["response"])
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]


def test_text_then_two_tool_calls_and_usage_details() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    chunks = [
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "a", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "b", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        chunk(usage=usage),
    ]
    events = run(new_events(), chunks)
    response = valid_response(events[-1]["response"])
    assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
    assert [(i.call_id, i.name, i.arguments) for i in response.output[1:]] == [  # type: ignore[union-attr]
        ("c1", "a", '{"x":1}'),
        ("c2", "b", "{}"),
    ]
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 20
    assert response.usage.output_tokens_details.reasoning_tokens == 5
    assert response.usage.total_tokens == 42
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2]


def test_namespace_functions_come_back_with_their_namespace() -> None:
    tools = [
        {"type": "namespace", "name": "agents", "description": "d", "tools": [{"type": "function", "name": "spawn"}]}
    ]
    events = run(
        new_events(tools=tools),
        [
            chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "spawn", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ],
    )
    item = events[-1]["response"]["output"][0]
    assert item["namespace"] == "agents"
    assert translate_tools(tools).chat == [{"type": "function", "function": {"name": "spawn"}}]


def test_errors_end_failed_or_cancelled() -> None:
    failed = run(new_events(), [chunk({"content": "a"})], UpstreamUnavailable("gone"))
    assert failed[-1]["type"] == "response.failed"
    response = valid_response(failed[-1]["response"])
    assert response.status == "failed" and response.error is not None and "gone" in response.error.message
    cancelled = run(new_events(), [chunk({"content": "a"})], StreamCancelled("stop"))
    assert cancelled[-1]["response"]["status"] == "cancelled"


def test_the_same_chunks_give_the_same_bytes() -> None:
    chunks = [chunk({"reasoning_content": "hm"}), chunk({"content": "x"}), chunk({}, "stop")]

    def frames() -> list[bytes]:
        events = new_events()
        out = [e for raw in chunks for e in events.feed(raw)] + events.finish(None)
        return [data for _, _, data in out]

    assert frames() == frames()


def test_an_sse_frame_per_chunk_is_the_frames_of_its_events() -> None:
    # feed_sse frames the usual chunk (text for the open message) in one step; every chunk, usual or
    # not, must give the bytes feed and sse_frames give, and leave the same response behind.
    usage = {"prompt_tokens": 3, "completion_tokens": 9}
    chunks = [
        chunk({"role": "assistant"}),
        chunk({"content": "Hel"}),  # opens the message: the general path
        chunk({"content": 'lo \u00e9"\n'}),  # the usual chunk, text JSON must escape
        chunk({"refusal": "no"}),
        b"not json",
        chunk({"reasoning_content": "think"}),  # closes the message, opens a reasoning item
        chunk({"content": "again"}),  # a new message: the general path again
        chunk({"content": "more"}),
        chunk({"content": "x", "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        chunk({"content": "after the call"}),
        chunk({"content": "and"}),
        chunk({"content": "last"}, "stop"),
        chunk(None, usage=usage),
    ]
    rid = b"resp_" + b"ab" * 16
    fused, general = new_events(), new_events()
    for raw in chunks:
        assert fused.feed_sse(rid, raw) == sse_frames(rid, general.feed(raw))
    assert fused.finish(None) == general.finish(None)
    assert fused.snapshot() == general.snapshot()


def test_unreadable_provider_chunks_are_skipped() -> None:
    events = run(new_events(), [b"not json", chunk({"content": "ok"}), b'{"choices": 7}', chunk({}, "stop")])
    assert valid_response(events[-1]["response"]).output_text == "ok"


def test_consecutive_function_calls_join_one_assistant_message() -> None:
    items = input_items(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "1", "name": "a", "arguments": "{}"},
            {"type": "function_call", "call_id": "2", "name": "b", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "1", "output": "A"},
            {"type": "function_call_output", "call_id": "2", "output": [{"type": "input_text", "text": "B"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ]
    )
    messages = to_messages("be nice", items)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["1", "2"]
    assert messages[2]["content"] == "calling"
    assert messages[4]["content"] == "B"


@pytest.mark.parametrize(
    ("choice", "tools", "expected"),
    [
        ("auto", [{"type": "function", "name": "f"}], "auto"),
        (
            {"type": "function", "name": "f"},
            [{"type": "function", "name": "f"}],
            {"type": "function", "function": {"name": "f"}},
        ),
        ({"type": "allowed_tools", "mode": "required", "tools": []}, [{"type": "function", "name": "f"}], "required"),
        ("auto", [{"type": "web_search"}], None),  # nothing left to choose from: no tool_choice at all
    ],
)
def test_tool_choice(choice: Any, tools: list[Any], expected: Any) -> None:
    assert translate_tool_choice(choice, translate_tools(tools)) == expected


def test_required_builtin_tools_are_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        translate_tool_choice("required", translate_tools([{"type": "web_search"}]))
    assert exc.value.code == "unsupported_parameter"
