"""Anthropic's Messages API answers -> the ``chat.completion`` chunks and objects the gateway reads.

The pipeline above the provider layer (retries, cache, resume log, budgets, the Messages route's
own translation back into Anthropic's events: ``api/messages/events.py``) speaks chat chunks. An
Anthropic deployment on the relay answers in Anthropic's events; each is turned into the chunk it
stands for, keeping what chat chunks can carry of Anthropic's answer:

- ``text_delta`` -> ``content``; ``thinking_delta`` -> ``reasoning_content``; ``signature_delta``
  and ``redacted_thinking`` blocks -> ``thinking_blocks`` (with the signature or data);
- a ``tool_use`` block -> a ``tool_calls`` entry (id and name), its ``input_json_delta`` -> its
  ``arguments``;
- ``message_delta`` -> the finish reason (``stop_sequence`` is ``stop`` with the matched sequence
  in the choice's ``stop_reason``, where OpenAI-wire servers such as vLLM put it) and usage:
  ``prompt_tokens`` counts the cache's reads and writes as OpenAI's does, and both are kept as
  Anthropic's own fields;
- ``message_start`` -> a chunk with the assistant's role and nothing else (usage comes at the end);
- ``message_stop`` -> the end; ``error`` -> the gateway error it stands for; ``ping``,
  ``content_block_stop`` and event or block types chat chunks have no place for -> nothing.

``completion_of`` does the same for a whole message object.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from app.domain.chunks import Chunk, Completion, Item, Usage, web_searches_of
from app.domain.errors import ContextLengthExceeded, GatewayError, UpstreamOverloaded, UpstreamUnavailable
from app.providers.chunks import read_chunk
from app.providers.translate import from_provider_reply

#: Anthropic stop reasons -> OpenAI finish reasons; one OpenAI has no name for is passed on as it is
#: (``pause_turn``, ``model_context_window_exceeded``): the Messages route reports it unchanged.
FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: Anthropic's error types -> the HTTP status Anthropic gives each (for an error event in a stream).
_ERROR_STATUS: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
#: Anthropic's status for an overloaded API (its ``overloaded_error``).
OVERLOADED: Final = 529

_NO_RAW = msgspec.Raw(b"")


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    server_tool_use: Any = None  # read by ``web_searches_of``, whatever its shape


class _Block(msgspec.Struct):
    """A content block of any type; only the fields of the types read here are kept."""

    type: str = ""
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = _NO_RAW  # handed on as the call's arguments, never decoded


class _Delta(msgspec.Struct):
    """A ``content_block_delta``'s delta or a ``message_delta``'s, in one view."""

    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Message(msgspec.Struct):
    id: str = ""
    model: str = ""
    content: list[_Block] | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: _Usage | None = None


class _Error(msgspec.Struct):
    type: str = ""
    message: str = ""


class _Event(msgspec.Struct):
    type: str = ""
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | str | None = None


_event = msgspec.json.Decoder(_Event)
_message = msgspec.json.Decoder(_Message)
_error_envelope = msgspec.json.Decoder(_Event)  # an error reply is shaped as the error event
_encode = msgspec.json.encode


def finish_of(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason, stop_reason) if stop_reason else "stop"


def _stop_fields(stop_reason: str | None, stop_sequence: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"finish_reason": finish_of(stop_reason)}
    if stop_reason == "stop_sequence" and stop_sequence is not None:
        fields["stop_reason"] = stop_sequence
    return fields


def _openai_usage(input_tokens: int, output_tokens: int, created: int, read: int, searches: int) -> dict[str, Any]:
    """Anthropic's counts as OpenAI's usage: its ``input_tokens`` leaves out the cache's reads and
    writes, OpenAI's ``prompt_tokens`` counts them (``api/messages/events.py`` ``anthropic_usage``
    takes them out again). Web searches keep Anthropic's ``server_tool_use`` (as LiteLLM writes it):
    each is charged apart from the tokens."""
    prompt = input_tokens + created + read
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "total_tokens": prompt + output_tokens,
        "prompt_tokens_details": {"cached_tokens": read},
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }
    if searches:
        usage["server_tool_use"] = {"web_search_requests": searches}
    return usage


def _searches(usage: _Usage) -> int | None:
    """The usage's web searches; None (keep what an earlier event said) when it has none to read."""
    tools = usage.server_tool_use
    if not isinstance(tools, dict) or "web_search_requests" not in tools:
        return None
    return web_searches_of(tools)


# -- errors ------------------------------------------------------------------------------------


def error_of(status: int, kind: str, message: str, retry_after: str | None, *, in_stream: bool) -> GatewayError:
    """Anthropic's error (a reply's status, or an error event's type) -> the gateway's error: an
    overloaded Anthropic is the gateway's overloaded error wherever it says so (a 529 reply or an
    ``overloaded_error`` event), so that it is retried and a Messages client gets 529 again."""
    if kind == "overloaded_error" or status == OVERLOADED:
        return UpstreamOverloaded(f"The provider is overloaded: {message or status}")
    if "prompt is too long" in message.lower():
        return ContextLengthExceeded(message)
    if in_stream and kind:
        status = _ERROR_STATUS.get(kind, 500)
    return from_provider_reply(status, message, None, retry_after, in_stream=in_stream)


def error_from_reply(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """An Anthropic error reply (``{"type": "error", "error": {"type", "message"}}``) -> the gateway error."""
    kind, message = "", ""
    try:
        error = _error_envelope.decode(body).error
        if isinstance(error, _Error):
            kind, message = error.type, error.message
        elif isinstance(error, str):
            message = error
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = body[:500].decode("utf-8", "replace")
    retry_after = headers.get("retry-after") or headers.get("Retry-After")
    return error_of(status, kind, message, retry_after, in_stream=False)


# -- a stream ----------------------------------------------------------------------------------


class StreamReader:
    """One stream's events -> chunks: ``read`` per event's data, in order."""

    __slots__ = ("_head", "_role", "_tools", "_top", "_usage")

    def __init__(self) -> None:
        self._top = _top("", "")
        self._head = self._top + _CHOICE
        self._role = b'"role":"assistant",'  # the first delta's, then nothing
        #: Anthropic's block index -> its tool call's index, for the ``tool_use`` blocks only.
        self._tools: dict[int, int] = {}
        #: input, output, cache creation, cache read, web searches: message_start's, then message_delta's.
        self._usage = [0, 0, 0, 0, 0]

    def read(self, data: bytes) -> Item | Literal[False]:
        """The item ``data`` (one event's) stands for: a chunk, the end (None), an error; False for nothing."""
        try:
            event = _event.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = UpstreamUnavailable("The provider sent an unreadable event.")
            error.__cause__ = exc
            return error
        kind = event.type
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "content_block_start":
            return self._block(event)
        if kind == "message_delta":
            return self._finish(event)
        if kind == "message_stop":
            return None
        if kind == "message_start":
            # A chunk of its own, as the message's start is an event of its own to Anthropic's
            # clients: the stream's first-chunk deadline, the status window and the client's
            # ``message_start`` follow Anthropic's start, not its first content (which, for thinking
            # that is not shown, may be the signature at the thinking's end).
            self._start(event.message)
            return self._chunk(b'"content":""')
        if kind == "error":
            said = event.error
            if isinstance(said, _Error):
                return error_of(0, said.type, said.message, None, in_stream=True)
            return error_of(0, "", said or "", None, in_stream=True)
        return False  # ping, content_block_stop, and event types added after this was written

    def _chunk(self, delta: bytes) -> Chunk:
        role, self._role = self._role, b""
        return read_chunk(b'%b{%b%b},"finish_reason":null}]}' % (self._head, role, delta))

    def _start(self, message: _Message | None) -> None:
        if message is None:
            return
        self._top = _top(message.id, message.model)
        self._head = self._top + _CHOICE
        if message.usage is not None:
            self._count(message.usage)

    def _count(self, usage: _Usage) -> None:
        counts = self._usage
        for i, value in enumerate(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens,
                _searches(usage),
            )
        ):
            if value is not None:
                counts[i] = value

    def _delta(self, event: _Event) -> Chunk | Literal[False]:
        delta = event.delta
        if delta is None:
            return False
        kind = delta.type
        if kind == "text_delta" and delta.text:
            return self._chunk(b'"content":%b' % _encode(delta.text))
        if kind == "thinking_delta" and delta.thinking:
            return self._chunk(b'"reasoning_content":%b' % _encode(delta.thinking))
        if kind == "signature_delta" and delta.signature:
            block = {"type": "thinking", "thinking": "", "signature": delta.signature}
            return self._chunk(b'"thinking_blocks":%b' % _encode([block]))
        if kind == "input_json_delta" and delta.partial_json:
            call = self._tools.get(event.index)
            if call is not None:  # a server tool's input (web search, ...) has no place in a chat chunk
                tool = {"index": call, "function": {"arguments": delta.partial_json}}
                return self._chunk(b'"tool_calls":%b' % _encode([tool]))
        return False  # empty deltas, citations and delta types added after this was written

    def _block(self, event: _Event) -> Chunk | Literal[False]:
        block = event.content_block
        if block is None:
            return False
        if block.type == "text" and block.text:
            return self._chunk(b'"content":%b' % _encode(block.text))
        if block.type == "thinking" and block.thinking:
            return self._chunk(b'"reasoning_content":%b' % _encode(block.thinking))
        if block.type == "redacted_thinking":
            return self._chunk(b'"thinking_blocks":%b' % _encode([{"type": "redacted_thinking", "data": block.data}]))
        if block.type == "tool_use":
            call = self._tools[event.index] = len(self._tools)
            arguments = bytes(block.input).decode() if block.input and bytes(block.input) != b"{}" else ""
            function = {"name": block.name or "", "arguments": arguments}
            tool = {"index": call, "id": block.id, "type": "function", "function": function}
            return self._chunk(b'"tool_calls":%b' % _encode([tool]))
        return False

    def _finish(self, event: _Event) -> Chunk:
        if event.usage is not None:
            self._count(event.usage)
        delta = event.delta or _Delta()
        tail = _encode(
            {
                "index": 0,
                "delta": {},
                **_stop_fields(delta.stop_reason, delta.stop_sequence),
            }
        )
        usage = _encode(_openai_usage(*self._usage))
        return read_chunk(b'%b%b],"usage":%b}' % (self._top, tail, usage))


#: What follows ``_top`` in a chunk with a delta, up to the delta's members.
_CHOICE: Final = b'{"index":0,"delta":'


def _top(message_id: str, model: str) -> bytes:
    """Every chunk's first bytes, up to its choices: the message's id and model, as OpenAI's chunks carry them."""
    top = _encode({"id": message_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model})
    return top[:-1] + b',"choices":['


# -- a whole message ---------------------------------------------------------------------------


def completion_of(raw: bytes) -> Completion:
    """An Anthropic message object -> the ``chat.completion`` the gateway reads (same mapping as a stream)."""
    try:
        message = _message.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamUnavailable("The provider's answer was not a message object.") from exc
    text: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.content or ():
        if block.type == "text":
            text.append(block.text or "")
        elif block.type == "thinking":
            reasoning.append(block.thinking or "")
            thinking_blocks.append({"type": "thinking", "thinking": block.thinking or "", "signature": block.signature})
        elif block.type == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.data})
        elif block.type == "tool_use":
            arguments = bytes(block.input).decode() if block.input else "{}"
            function = {"name": block.name or "", "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        reply["thinking_blocks"] = thinking_blocks
    if calls:
        reply["tool_calls"] = calls
    usage = message.usage or _Usage()
    counts = (
        usage.input_tokens or 0,
        usage.output_tokens or 0,
        usage.cache_creation_input_tokens or 0,
        usage.cache_read_input_tokens or 0,
        _searches(usage) or 0,
    )
    openai_usage = _openai_usage(*counts)
    answer = {
        "id": message.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.model,
        "choices": [{"index": 0, "message": reply, **_stop_fields(message.stop_reason, message.stop_sequence)}],
        "usage": openai_usage,
    }
    return Completion(
        raw=_encode(answer),
        usage=Usage(prompt_tokens=openai_usage["prompt_tokens"], completion_tokens=counts[1], web_searches=counts[4]),
    )
