"""Chat completion chunks and completions -> Anthropic Messages events and message objects.

``MessageEvents`` is the stream's translator: it reads each ``chat.completion.chunk`` the pipeline
produces and returns the Anthropic events it stands for, as ``Chunk``s whose ``raw`` is the event's
JSON (``{"type": "<event>", ...}``: the SSE framing reads the event name from it). Blocks follow
the deltas: reasoning -> a ``thinking`` block (``thinking_delta``, ``signature_delta`` when the
provider hands a signature on), content -> a ``text`` block, each tool call -> a ``tool_use`` block
(``input_json_delta``); a block is stopped when the next one starts. ``message_delta`` (stop
reason and usage) and ``message_stop`` come at the end of the provider's stream, once its usage is in.

``message_object`` does the same for a whole ``chat.completion``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from app.domain.chunks import Chunk, Item, Usage, web_searches_of

_encode = msgspec.json.encode
#: Where events are appended: a list of them, or a push's list of items.
_Out = list[Chunk] | list[Item]

#: OpenAI finish reasons -> Anthropic stop reasons.
STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
    # Anthropic's own, which an Anthropic deployment on the relay hands on as they are.
    "pause_turn": "pause_turn",
    "model_context_window_exceeded": "model_context_window_exceeded",
}


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _ThinkingBlock(msgspec.Struct):
    type: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None
    thinking_blocks: list[_ThinkingBlock] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    #: What stopped the answer, where an OpenAI-wire provider says it (vLLM and servers like it: the
    #: matched stop string, or a stop token's id).
    stop_reason: str | int | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    server_tool_use: Any = None

    @property
    def web_searches(self) -> int:
        return web_searches_of(self.server_tool_use)


class _ChunkView(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None
    thinking_blocks: list[_ThinkingBlock] | None = None


class _CompletionChoice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class _CompletionView(msgspec.Struct):
    choices: list[_CompletionChoice] | None = None
    usage: _Usage | None = None


_chunk_view = msgspec.json.Decoder(_ChunkView)
_completion_view = msgspec.json.Decoder(_CompletionView)
_loose = msgspec.json.Decoder()


def stop_of(finish: str | None, named: str | int | None, sequences: Sequence[str]) -> tuple[str, str | None]:
    """(``stop_reason``, ``stop_sequence``) for a provider's finish reason and what it named as the cause.

    OpenAI's wire says ``stop`` both for a natural end and for a matched stop sequence, and leaves
    the sequence out of the text, so the gateway cannot tell the two apart on its own: it reports
    ``stop_sequence`` only when the provider names one of the request's sequences as the cause, and
    ``end_turn`` otherwise (never a guess that would tell a client its sequence matched when it did not).
    """
    if (finish is None or finish == "stop") and isinstance(named, str) and named in sequences:
        return "stop_sequence", named
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def anthropic_usage(usage: _Usage | None, *, fallback_input: int, fallback_output: int) -> dict[str, Any]:
    """OpenAI usage -> Anthropic's: ``input_tokens`` there excludes the cache's reads and writes."""
    if usage is None:
        return {
            "input_tokens": fallback_input,
            "output_tokens": fallback_output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    read = usage.cache_read_input_tokens
    if read is None and usage.prompt_tokens_details is not None:
        read = usage.prompt_tokens_details.cached_tokens
    read = read or 0
    created = usage.cache_creation_input_tokens or 0
    prompt = usage.prompt_tokens if usage.prompt_tokens is not None else fallback_input
    counts: dict[str, Any] = {
        "input_tokens": max(prompt - read - created, 0),
        "output_tokens": usage.completion_tokens if usage.completion_tokens is not None else fallback_output,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }
    if usage.web_searches:
        counts["server_tool_use"] = {"web_search_requests": usage.web_searches}
    return counts


def _gateway_usage(usage: _Usage | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        web_searches=usage.web_searches,
    )


def _event(data: dict[str, Any], *, content: bool = False) -> Chunk:
    return Chunk(raw=_encode(data), has_content=content)


# The deltas, one per provider chunk, are written from templates: the same bytes ``_encode`` gives
# the event's dict (keys in this order, no spaces), for a fraction of its cost on the hottest path.
_TEXT_DELTA: Final = b'{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%b}}'
_THINKING_DELTA: Final = b'{"type":"content_block_delta","index":%d,"delta":{"type":"thinking_delta","thinking":%b}}'
_JSON_DELTA: Final = b'{"type":"content_block_delta","index":%d,"delta":{"type":"input_json_delta","partial_json":%b}}'


def _delta_event(template: bytes, index: int, text: str) -> Chunk:
    return Chunk(raw=template % (index, _encode(text)), has_content=True)


class MessageEvents:
    """One stream's translation; ``feed`` per chunk, ``finish`` at the provider's clean end."""

    __slots__ = (
        "_block",
        "_finish",
        "_index",
        "_input_estimate",
        "_kind",
        "_message_id",
        "_model",
        "_output_chars",
        "_started",
        "_stop_named",
        "_stop_sequences",
        "_tool_ids",
        "_tools",
        "_usage",
    )

    def __init__(
        self, message_id: str, model: str, input_estimate: int, stop_sequences: Sequence[str] | None = None
    ) -> None:
        self._message_id = message_id
        self._stop_sequences = stop_sequences or ()
        self._stop_named: str | int | None = None
        self._model = model
        self._input_estimate = input_estimate
        self._started = False
        self._index = -1  # the open block's index, -1 when none is open
        self._block = 0  # the next block's index
        self._kind: str | None = None
        self._tools: dict[int, int] = {}  # the provider's tool call index -> its block's index
        self._tool_ids: dict[int, str] = {}
        self._finish: str | None = None
        self._usage: _Usage | None = None
        self._output_chars = 0

    def _start(self, out: _Out) -> None:
        if self._started:
            return
        self._started = True
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self._input_estimate,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        out.append(_event({"type": "message_start", "message": message}))

    def _stop_block(self, out: _Out) -> None:
        if self._index >= 0:
            out.append(_event({"type": "content_block_stop", "index": self._index}))
            self._index = -1
            self._kind = None

    def _open(self, kind: str, block: dict[str, Any], out: _Out) -> int:
        self._stop_block(out)
        self._index = index = self._block
        self._block += 1
        self._kind = kind
        out.append(_event({"type": "content_block_start", "index": index, "content_block": block}))
        return index

    def _delta(self, index: int, delta: dict[str, Any], out: _Out) -> None:
        out.append(_event({"type": "content_block_delta", "index": index, "delta": delta}, content=True))

    def feed(self, chunk: Chunk) -> list[Chunk]:
        out: list[Chunk] = []
        self.feed_into(chunk, out)
        return out

    def feed_into(self, chunk: Chunk, out: _Out) -> None:
        """The events ``chunk`` stands for, appended to ``out``."""
        if not self._started:
            self._start(out)
        if not (chunk.has_content or chunk.finish_reason or chunk.usage) and b'"thinking_blocks"' not in chunk.raw:
            return  # a role-only or empty chunk (what the pipeline read of it says so): no event stands for it
        try:
            view = _chunk_view.decode(chunk.raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # a chunk of a shape no provider sends: nothing a client could be given of it
        choices = view.choices
        if view.usage is None and choices is not None and len(choices) == 1 and self._kind == "text":
            # The common chunk, more text for the open text block: straight to its delta.
            choice, delta = choices[0], choices[0].delta
            if (
                delta is not None
                and delta.content
                and not (choice.index or choice.finish_reason or delta.reasoning_content)
                and delta.tool_calls is None
                and delta.thinking_blocks is None
            ):
                self._output_chars += len(delta.content)
                raw = _TEXT_DELTA % (self._index, _encode(delta.content))
                out.append(Chunk(raw=raw, has_content=True, tokens=chunk.tokens))
                return
        if view.usage is not None:
            self._usage = view.usage
        start = len(out)
        for choice in choices or ():
            if choice.index != 0:
                continue  # Anthropic messages have one choice
            if choice.finish_reason:
                self._finish = choice.finish_reason
                self._stop_named = choice.stop_reason
            if choice.delta is not None:
                self._read_delta(choice.delta, out)
        if chunk.tokens:
            # The chunk's estimated tokens ride on the first event with content made of it: the
            # stream counts its output from its events, and that count is what a call whose usage
            # never arrives is charged.
            for i in range(start, len(out)):
                event = out[i]
                if isinstance(event, Chunk) and event.has_content:
                    out[i] = msgspec.structs.replace(event, tokens=chunk.tokens)
                    break

    def _read_delta(self, delta: _Delta, out: _Out) -> None:
        if delta.reasoning_content:
            if self._kind != "thinking":
                self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            self._output_chars += len(delta.reasoning_content)
            out.append(_delta_event(_THINKING_DELTA, self._index, delta.reasoning_content))
        for block in delta.thinking_blocks or ():
            if block.type == "redacted_thinking" and block.data:
                self._open("redacted_thinking", {"type": "redacted_thinking", "data": block.data}, out)
                self._stop_block(out)
            elif block.signature:
                if self._kind != "thinking":
                    self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
                self._delta(self._index, {"type": "signature_delta", "signature": block.signature}, out)
        if delta.content:
            if self._kind != "text":
                self._open("text", {"type": "text", "text": ""}, out)
            self._output_chars += len(delta.content)
            out.append(_delta_event(_TEXT_DELTA, self._index, delta.content))
        for call in delta.tool_calls or ():
            self._read_tool_call(call, out)

    def _read_tool_call(self, call: _ToolCall, out: _Out) -> None:
        function = call.function or _Function()
        index = self._tools.get(call.index)
        if index is None or (call.id is not None and call.id != self._tool_ids.get(call.index)):
            # A new call (a provider that repeats the id on every delta is still one call).
            call_id = call.id or f"toolu_{self._message_id}_{call.index}"
            block = {"type": "tool_use", "id": call_id, "name": function.name or "", "input": {}}
            index = self._tools[call.index] = self._open("tool_use", block, out)
            self._tool_ids[call.index] = call_id
        if function.arguments:
            self._output_chars += len(function.arguments)
            out.append(_delta_event(_JSON_DELTA, index, function.arguments))

    def finish(self) -> list[Chunk]:
        """The provider's stream ended cleanly: close the open block, then message_delta and message_stop."""
        out: list[Chunk] = []
        self._start(out)
        self._stop_block(out)
        stop_reason, stop_sequence = stop_of(self._finish, self._stop_named, self._stop_sequences)
        usage = anthropic_usage(
            self._usage, fallback_input=self._input_estimate, fallback_output=(self._output_chars + 3) // 4
        )
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        out.append(
            Chunk(
                raw=_encode({"type": "message_delta", "delta": delta, "usage": usage}),
                finish_reason=self._finish or "stop",
                usage=_gateway_usage(self._usage),
            )
        )
        out.append(_event({"type": "message_stop"}))
        return out


def _tool_input(arguments: str | None) -> Any:
    if not arguments:
        return {}
    try:
        value = _loose.decode(arguments)
    except msgspec.DecodeError:
        return {}  # a model that wrote broken JSON: the block still has the object Anthropic's shape needs
    return value if isinstance(value, dict) else {}


def message_object(
    raw: bytes, message_id: str, model: str, input_estimate: int, stop_sequences: Sequence[str] | None = None
) -> bytes:
    """A ``chat.completion``'s JSON -> the Anthropic ``message`` object's JSON."""
    view = _completion_view.decode(raw)
    choice = next((c for c in view.choices or () if c.index == 0), None)
    message = choice.message if choice is not None and choice.message is not None else _Message()
    content: list[dict[str, Any]] = []
    signed = [b for b in message.thinking_blocks or () if b.type in ("thinking", "redacted_thinking")]
    for block in signed:
        if block.type == "redacted_thinking":
            content.append({"type": "redacted_thinking", "data": block.data or ""})
        else:
            content.append({"type": "thinking", "thinking": block.thinking or "", "signature": block.signature or ""})
    if not signed and message.reasoning_content:
        content.append({"type": "thinking", "thinking": message.reasoning_content, "signature": ""})
    if message.content:
        content.append({"type": "text", "text": message.content})
    for i, call in enumerate(message.tool_calls or ()):
        function = call.function or _Function()
        content.append(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_{message_id}_{i}",
                "name": function.name or "",
                "input": _tool_input(function.arguments),
            }
        )
    finish = choice.finish_reason if choice is not None else None
    stop_reason, stop_sequence = stop_of(
        finish, choice.stop_reason if choice is not None else None, stop_sequences or ()
    )
    output_chars = sum(len(c.get("text") or c.get("thinking") or "") for c in content)
    return _encode(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": anthropic_usage(
                view.usage, fallback_input=input_estimate, fallback_output=(output_chars + 3) // 4
            ),
        }
    )
