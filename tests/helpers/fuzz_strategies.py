"""Hypothesis strategies for hostile chat bodies and WebSocket frames, shared by the suite's bounded
fuzz tests (tests/api/test_fuzz.py) and the long runs (loadtests/fuzz.py).

Bodies are mostly chat-shaped, so the fuzzer gets past the first validation and into the provider
layer: the right fields with wrong values, provider-layer controls, unknown fields, odd nesting.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from app.domain.chat_request import PROVIDER_CONTROLS

MODELS = ["normal", "fast", "demo", "tools", "bad_request", "nope", "", "normal\x00", "a" * 300]
OPENAI_FIELDS = [
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "tools", "tool_choice", "stop",
    "seed", "response_format", "metadata", "user", "logit_bias", "logprobs", "top_logprobs", "stream",
    "stream_options", "presence_penalty", "frequency_penalty", "parallel_tool_calls", "reasoning_effort",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
contents = st.one_of(
    st.text(max_size=200),
    st.none(),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": st.text()})),
    json_values,
)
messages = (
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "tool", "", "x" * 100]), "content": contents}
        ),
        min_size=0,
        max_size=4,
    )
    | json_values
)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(st.sampled_from(MODELS) | st.text(max_size=20)), "messages": draw(messages)}
    for name in draw(st.lists(st.sampled_from(OPENAI_FIELDS), max_size=4, unique=True)):
        body[name] = draw(json_values)
    if draw(st.booleans()):
        body[draw(st.sampled_from(sorted(PROVIDER_CONTROLS)))] = draw(json_values)
    for name in draw(st.lists(st.text(min_size=1, max_size=16), max_size=3)):
        body[name] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        del body["model"]
    return body


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


raw_bodies = st.one_of(
    chat_bodies().map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=300),
    st.integers(1, 3000).map(lambda d: ('{"model":"normal","messages":' + nested(d) + "}").encode()),
    st.integers(1, 3000).map(
        lambda d: ('{"model":"normal","messages":[{"role":"user","content":"x"}],"x":' + nested(d) + "}").encode()
    ),
    st.text(max_size=300).map(str.encode),
)


@st.composite
def client_frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 6))
    frame_id = draw(st.text(max_size=10) | json_values)
    if kind <= 2:
        frame: Any = {"type": "chat.completion.create", "id": frame_id, "request": draw(chat_bodies() | json_values)}
    elif kind == 3:
        frame = {"type": "chat.completion.cancel", "id": frame_id}
    elif kind == 4:
        frame = {"type": draw(st.text(max_size=30)), "id": frame_id, **draw(st.dictionaries(st.text(), json_values))}
    elif kind == 5:
        return nested(draw(st.integers(1, 3000)))
    else:
        return draw(st.binary(max_size=200) | st.text(max_size=200))
    return json.dumps(frame)


# -- the Responses API (API.md 7): items, tools, formats and WebSocket frames ---------------------

RESPONSES_FIELDS = [
    "instructions", "stream", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
    "max_output_tokens", "text", "reasoning", "previous_response_id", "store", "metadata", "user", "include",
    "prompt_cache_key", "client_metadata", "truncation", "background", "conversation", "prompt",
]  # fmt: skip
PART_TYPES = ["input_text", "output_text", "input_image", "input_file", "refusal", "input_audio", "x"]
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(PART_TYPES)},
    optional={
        "text": scalars,
        "image_url": st.sampled_from(["https://example.com/a.png", "data:image/png;base64,AAAA", "ftp://x"]) | scalars,
        "file_id": scalars,
        "file_data": scalars,
        "file_url": scalars,
        "detail": st.sampled_from(["auto", "low", "high", "max"]),
        "input_audio": json_values,
    },
)
response_items = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", ""])},
        optional={"type": st.just("message"), "content": st.text(max_size=50) | st.lists(parts, max_size=3) | scalars},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call")},
        optional={"call_id": scalars, "name": scalars, "arguments": scalars, "namespace": scalars},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output")},
        optional={"call_id": scalars, "output": st.text(max_size=30) | st.lists(parts, max_size=2) | scalars},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "web_search_call", "x"])}),
    json_values,
)
response_tools = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("function")},
        optional={"name": scalars | st.just("get_weather"), "parameters": json_values, "strict": scalars},
    ),
    st.fixed_dictionaries(
        {"type": st.just("namespace"), "name": st.text(max_size=10)},
        optional={"tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": st.text()}))},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search", "mcp", "custom", "wat"])}),
    json_values,
)


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(MODELS) | st.text(max_size=20)),
        "input": draw(st.text(max_size=50) | st.lists(response_items, max_size=4) | json_values),
    }
    for name in draw(st.lists(st.sampled_from(RESPONSES_FIELDS), max_size=4, unique=True)):
        if name == "tools":
            body[name] = draw(st.lists(response_tools, max_size=3) | json_values)
        elif name == "text":
            body[name] = {
                "format": draw(
                    st.fixed_dictionaries(
                        {"type": st.sampled_from(["text", "json_object", "json_schema", "x"])},
                        optional={"name": scalars, "schema": json_values},
                    )
                )
            }
        elif name == "tool_choice":
            body[name] = draw(
                st.sampled_from(["auto", "none", "required", "x"])
                | st.fixed_dictionaries(
                    {"type": st.sampled_from(["function", "web_search_preview", "allowed_tools", "x"])},
                    optional={"name": scalars, "mode": scalars},
                )
            )
        else:
            body[name] = draw(json_values)
    if draw(st.booleans()):
        body[draw(st.sampled_from(sorted(PROVIDER_CONTROLS)))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        del body["model"]
    return body  # fmt: skip


raw_responses_bodies = st.one_of(
    responses_bodies().map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=300),
    st.integers(1, 3000).map(lambda d: ('{"model":"normal","input":' + nested(d) + "}").encode()),
)


@st.composite
def responses_frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        return json.dumps({"type": "response.create", **draw(responses_bodies())})
    if kind == 3:
        return json.dumps({"type": draw(st.text(max_size=30)), **draw(st.dictionaries(st.text(), json_values))})
    if kind == 4:
        return nested(draw(st.integers(1, 3000)))
    return draw(st.binary(max_size=200) | st.text(max_size=200))


# ---- the Messages API (Anthropic) and embeddings -------------------------------------------------

BLOCK_TYPES = ["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "document", "x", ""]
SOURCES = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("base64"), "media_type": st.sampled_from(["image/png", "text/plain", ""]), "data": st.text()}
    ),
    st.fixed_dictionaries({"type": st.just("url"), "url": st.text(max_size=40)}),
    json_values,
)


@st.composite
def anthropic_blocks(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(BLOCK_TYPES))
    block: dict[str, Any] = {"type": kind}
    fields = {
        "text": st.text(max_size=40) | json_values,
        "source": SOURCES,
        "id": st.text(max_size=10) | json_values,
        "name": st.text(max_size=10) | json_values,
        "input": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
        "tool_use_id": st.text(max_size=10) | json_values,
        "content": st.text(max_size=20) | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})),
        "thinking": st.text(max_size=20),
        "signature": st.text(max_size=20),
        "data": st.text(max_size=20),
        "cache_control": st.just({"type": "ephemeral"}) | json_values,
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True)):
        block[name] = draw(fields[name])
    return block if draw(st.integers(0, 9)) else draw(json_values)


anthropic_messages = (
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant", "system", "tool", ""]),
                "content": st.text(max_size=40) | st.lists(anthropic_blocks(), max_size=4) | json_values,
            }
        ),
        min_size=0,
        max_size=4,
    )
    | json_values
)
anthropic_tools = st.lists(
    st.fixed_dictionaries(
        {"name": st.text(max_size=10) | json_values},
        optional={
            "description": st.text(max_size=20) | json_values,
            "input_schema": st.just({"type": "object"}) | json_values,
            "type": st.sampled_from(["custom", "web_search_20250305", "bash_20250124", ""]) | json_values,
            "cache_control": st.just({"type": "ephemeral"}),
        },
    ),
    max_size=3,
)
MESSAGES_FIELDS = {
    "system": st.text(max_size=30) | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})),
    "stop_sequences": st.lists(st.text(max_size=5), max_size=3) | json_values,
    "temperature": json_values,
    "top_p": json_values,
    "top_k": json_values,
    "tools": anthropic_tools | json_values,
    "tool_choice": st.fixed_dictionaries(
        {"type": st.sampled_from(["auto", "any", "tool", "none", "x"])}, optional={"name": st.text(max_size=8)}
    )
    | json_values,
    "thinking": st.fixed_dictionaries(
        {"type": st.sampled_from(["enabled", "disabled", "adaptive"])}, optional={"budget_tokens": json_values}
    )
    | json_values,
    "metadata": st.fixed_dictionaries({}, optional={"user_id": st.text(max_size=20) | json_values}) | json_values,
    "stream": json_values,
    "context_management": json_values,
    "output_config": json_values,
}


@st.composite
def messages_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(MODELS) | st.text(max_size=20)),
        "max_tokens": draw(st.integers(-5, 100_000) | json_values),
        "messages": draw(anthropic_messages),
    }
    for name in draw(st.lists(st.sampled_from(sorted(MESSAGES_FIELDS)), max_size=5, unique=True)):
        body[name] = draw(MESSAGES_FIELDS[name])
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(sorted(PROVIDER_CONTROLS)))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        del body[draw(st.sampled_from(["model", "max_tokens", "messages"]))]
    return body


embedding_inputs = st.one_of(
    st.text(max_size=40),
    st.lists(st.text(max_size=20), max_size=4),
    st.lists(st.integers(-3, 100_000), max_size=6),
    st.lists(st.lists(st.integers(-3, 100), max_size=4), max_size=3),
    json_values,
)


@st.composite
def embeddings_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["embed", "normal", "nope", ""]) | json_values),
        "input": draw(embedding_inputs),
    }
    optional = {
        "encoding_format": st.sampled_from(["float", "base64", "hex"]) | json_values,
        "dimensions": st.integers(-2, 70_000) | json_values,
        "user": st.text(max_size=20) | json_values,
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=3, unique=True)):
        body[name] = draw(optional[name])
    if draw(st.integers(0, 9)) == 0:
        del body[draw(st.sampled_from(["model", "input"]))]
    return body
