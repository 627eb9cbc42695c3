"""Chat-completion chunks -> the Responses event sequence and response object (docs/responses.md).

``ResponseEvents`` is a deterministic state machine: the same skeleton and the same chunks give the
same events, byte for byte. That is what makes a Responses stream resumable without a log of its
own: the chat stream's log (``app/resume/``) holds the provider's chunks, and a resume runs them
through a fresh ``ResponseEvents`` and skips what the client already has. Nothing here reads a
clock or a random source; item ids derive from the response id and the item's index.

OpenAI's order: ``response.created``, ``response.in_progress``, then per output item
``output_item.added`` (+ ``content_part.added``), its deltas, their ``.done`` events,
``output_item.done``; then ``response.completed`` / ``response.incomplete`` / ``response.failed``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from app.domain.errors import GatewayError, StreamCancelled

_encode = msgspec.json.encode
#: One event: its type, its sequence number and its JSON (what SSE's ``data:`` and a WebSocket frame carry).
Event = tuple[str, int, bytes]


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolDelta] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None  # a whole completion's message: the same fields, read the same way
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _ChatChunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None


_decode_chunk = msgspec.json.Decoder(_ChatChunk).decode

#: ``finish_reason`` -> the incomplete details' reason (others complete the response).
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}
#: The error codes the SDK's ``ResponseError`` admits that a gateway error maps onto.
_RATE_LIMITED: Final = 429


def usage_object(usage: _Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    cached = (usage.prompt_tokens_details.cached_tokens or 0) if usage.prompt_tokens_details else 0
    reasoning = (usage.completion_tokens_details.reasoning_tokens or 0) if usage.completion_tokens_details else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def error_object(error: GatewayError) -> dict[str, Any]:
    code = "rate_limit_exceeded" if error.status == _RATE_LIMITED else "server_error"
    return {"code": code, "message": f"{error.message} ({error.code})", "param": error.param, "type": error.type}


class ResponseEvents:
    """One response's events, from its skeleton (the response object as created) and its chunks."""

    def __init__(self, skeleton: dict[str, Any], namespaces: dict[str, str] | None = None) -> None:
        self.skeleton = skeleton
        self.response_id: str = skeleton["id"]
        self._base = self.response_id.removeprefix("resp_")
        self._namespaces = namespaces or {}
        self.seq = -1
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._open_kind = ""  # "message", "reasoning", "function_call:<index>"
        self._calls: dict[int, dict[str, Any]] = {}  # tool call index -> its item
        self._text: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.started = False
        self.ended = False
        self.status = "in_progress"
        # The open item's delta event, around its sequence number and its delta (``_delta``).
        self._delta_kind = ""
        self._delta_head = b""
        self._delta_mid = b""
        self._delta_tail = b""
        self._delta_event = b""  # its type as bytes, for an SSE frame's ``event:`` line
        self._extra: dict[str, Any] = {}  # error or incomplete_details, once the response ended

    # -- events ------------------------------------------------------------------------------

    def _event(self, out: list[Event], kind: str, fields: dict[str, Any]) -> None:
        # Encoded at once: the dicts it holds (items, the response) may change after it.
        self.seq += 1
        out.append((kind, self.seq, _encode({"type": kind, "sequence_number": self.seq, **fields})))

    def start(self) -> list[Event]:
        out: list[Event] = []
        if not self.started:
            self.started = True
            response = _encode(self.snapshot())  # the same object twice: encoded once
            for kind in ("response.created", "response.in_progress"):
                self.seq += 1
                head = b'{"type":"%b","sequence_number":%d,"response":' % (kind.encode(), self.seq)
                out.append((kind, self.seq, head + response + b"}"))
        return out

    def feed(self, raw: bytes) -> list[Event]:
        """The events one chat chunk stands for (none for a chunk that carries nothing)."""
        out = self.start() if not self.started else []
        try:
            chunk = _decode_chunk(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return out  # provider bytes the gateway cannot read: nothing a client could use either
        self._take(chunk, out)
        return out

    def feed_sse(self, response_id: bytes, raw: bytes) -> bytes:
        """``feed`` and ``sse_frames`` for one chunk, the same bytes. The usual chunk (text for the
        message being streamed, and nothing else) is framed here in one step: it is nearly every
        event of a stream, and through ``feed``, ``_take``, ``_delta`` and ``sse_frames`` it would
        cost four more calls and an event list each."""
        if self._open_kind != "message":
            return sse_frames(response_id, self.feed(raw))
        try:
            chunk = _decode_chunk(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return b""
        choices = chunk.choices
        if choices and chunk.usage is None:
            choice = choices[0]
            delta = choice.delta
            if (
                delta is not None
                and choice.finish_reason is None
                and not (delta.reasoning_content or delta.reasoning or delta.tool_calls)
                and (text := delta.content or delta.refusal)
            ):
                self._text.append(text)  # what _take and _delta do with it
                self.seq = seq = self.seq + 1
                return b"event: %b\nid: %b:%d\ndata: %b%d%b%b%b\n\n" % (
                    self._delta_event,
                    response_id,
                    seq,
                    self._delta_head,
                    seq,
                    self._delta_mid,
                    _encode(text),
                    self._delta_tail,
                )
        out: list[Event] = []
        self._take(chunk, out)
        return sse_frames(response_id, out)

    def feed_completion(self, raw: bytes) -> None:
        """A whole ``chat.completion`` (the JSON path), taken like one chunk holding everything."""
        self.start()
        try:
            chunk = _decode_chunk(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        for choice in chunk.choices or []:
            if choice.message is not None:
                calls = choice.message.tool_calls or []
                for i, call in enumerate(calls):
                    call.index = i  # a message's calls carry no index: their position is it
                choice.delta, choice.message = choice.message, None
        self._take(chunk, [])

    def _take(self, chunk: _ChatChunk, out: list[Event]) -> None:
        if chunk.usage is not None:
            self.usage = usage_object(chunk.usage)
        choices = chunk.choices
        if not choices:
            return
        choice = choices[0]
        delta = choice.delta
        if delta is not None:
            reasoning = delta.reasoning_content or delta.reasoning
            if reasoning:
                self._reasoning(reasoning, out)
            text = delta.content or delta.refusal
            if text:
                if self._open_kind == "message":  # nearly every chunk: the open message grows
                    self._text.append(text)
                    self._delta(out, text)
                else:
                    self._message(text, out)
            if delta.tool_calls:
                for call in delta.tool_calls:
                    self._tool_call(call, out)
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason

    def _index(self) -> int:
        return len(self.output)

    def _open_item(self, kind: str, item: dict[str, Any], out: list[Event]) -> None:
        self._close(out)
        self._open, self._open_kind = item, kind
        index = self._index()
        self.output.append(item)
        self._event(out, "response.output_item.added", {"output_index": index, "item": item})
        if kind in ("message", "reasoning"):
            part = _text_part(kind, "")
            self._event(
                out,
                "response.content_part.added",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            )

    def _template(self, kind: str, item_id: str, index: int, *, content_index: bool, tail: bytes) -> None:
        """The open item's delta event as bytes around its sequence number and delta: deltas are
        nearly every event of a stream, and this spares each one a dict and a whole encode."""
        self._delta_kind = kind
        self._delta_event = _event_line(kind)
        self._delta_head = b'{"type":"%b","sequence_number":' % kind.encode()
        mid = b',"item_id":%b,"output_index":%d' % (_encode(item_id), index)
        self._delta_mid = mid + (b',"content_index":0,"delta":' if content_index else b',"delta":')
        self._delta_tail = tail

    def _delta(self, out: list[Event], delta: str) -> None:
        self.seq = seq = self.seq + 1
        data = b"%b%d%b%b%b" % (self._delta_head, seq, self._delta_mid, _encode(delta), self._delta_tail)
        out.append((self._delta_kind, seq, data))

    def _message(self, text: str, out: list[Event]) -> None:
        if self._open_kind != "message":
            index = self._index()
            item_id = f"msg_{self._base}_{index}"
            item: dict[str, Any] = {"id": item_id, "type": "message", "status": "in_progress",
                    "content": [], "role": "assistant"}  # fmt: skip
            self._open_item("message", item, out)
            self._template("response.output_text.delta", item_id, index, content_index=True, tail=b',"logprobs":[]}')
            self._text = []
        self._text.append(text)
        self._delta(out, text)

    def _reasoning(self, text: str, out: list[Event]) -> None:
        if self._open_kind != "reasoning":
            index = self._index()
            item_id = f"rs_{self._base}_{index}"
            item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": [], "content": [],
                    "status": "in_progress"}  # fmt: skip
            self._open_item("reasoning", item, out)
            self._template("response.reasoning_text.delta", item_id, index, content_index=True, tail=b"}")
            self._text = []
        self._text.append(text)
        self._delta(out, text)

    def _tool_call(self, call: _ToolDelta, out: list[Event]) -> None:
        kind = f"function_call:{call.index}"
        function = call.function or _Function()
        if self._open_kind != kind:
            if call.index in self._calls:
                # A late piece of a call already closed (providers interleave rarely): kept, not re-announced.
                self._calls[call.index]["arguments"] += function.arguments or ""
                return
            name = function.name or ""
            item: dict[str, Any] = {
                "id": f"fc_{self._base}_{self._index()}",
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call.id or f"call_{self._base}_{self._index()}",
                "name": name,
            }
            if name in self._namespaces:
                item["namespace"] = self._namespaces[name]
            self._calls[call.index] = item
            index = self._index()
            self._open_item(kind, item, out)
            self._template("response.function_call_arguments.delta", item["id"], index, content_index=False, tail=b"}")
        assert self._open is not None
        if function.arguments:
            self._open["arguments"] += function.arguments
            self._delta(out, function.arguments)

    def _close(self, out: list[Event], status: str = "completed") -> None:
        item, kind = self._open, self._open_kind
        if item is None:
            return
        self._open, self._open_kind = None, ""
        index = self.output.index(item)
        item_id = item["id"]
        if kind in ("message", "reasoning"):
            text = "".join(self._text)
            done = "response.output_text.done" if kind == "message" else "response.reasoning_text.done"
            extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
            self._event(
                out, done, {"item_id": item_id, "output_index": index, "content_index": 0, "text": text, **extra}
            )
            part = _text_part(kind, text)
            self._event(
                out,
                "response.content_part.done",
                {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
            )
            item["content"] = [part]
        else:
            fields = {"item_id": item_id, "output_index": index, "arguments": item["arguments"], "name": item["name"]}
            self._event(out, "response.function_call_arguments.done", fields)
        item["status"] = status
        self._event(out, "response.output_item.done", {"output_index": index, "item": item})

    def finish(self, error: GatewayError | None) -> list[Event]:
        """The last events: the open item closed and the response's end (completed, incomplete, failed)."""
        out = self.start()
        if self.ended:
            return out
        self.ended = True
        if error is not None:
            self.status = "cancelled" if error.code == StreamCancelled.default_code else "failed"
            for item in self.output:
                if item.get("status") == "in_progress":
                    item["status"] = "incomplete"
            self._open = None
            self._extra["error"] = error_object(error)
            response = self.snapshot()
            self._event(out, "response.failed", {"response": response})
            return out
        reason = _INCOMPLETE.get(self.finish_reason or "")
        self._close(out, "incomplete" if reason else "completed")
        self.status = "incomplete" if reason else "completed"
        if reason:
            self._extra["incomplete_details"] = {"reason": reason}
        response = self.snapshot()
        kind = "response.incomplete" if reason else "response.completed"
        self._event(out, kind, {"response": response})
        return out

    def snapshot(self) -> dict[str, Any]:
        """The response object as it stands: a copy down to the items (their parts are replaced,
        never changed in place, so sharing them is safe)."""
        response = dict(self.skeleton)
        response["status"] = self.status
        response["output"] = [dict(item) for item in self.output]
        response["usage"] = self.usage
        response.update(self._extra)
        return response


def _text_part(kind: str, text: str) -> dict[str, Any]:
    if kind == "message":
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {"type": "reasoning_text", "text": text}


def sse_frame(response_id: bytes, kind: str, seq: int, data: bytes) -> bytes:
    return b"event: %b\nid: %b:%d\ndata: %b\n\n" % (_event_line(kind), response_id, seq, data)


#: The event types' names as bytes (a stream's frames name a handful of types, over and over).
_EVENT_NAMES: dict[str, bytes] = {}


def _event_line(kind: str) -> bytes:
    name = _EVENT_NAMES.get(kind)
    if name is None:
        name = _EVENT_NAMES[kind] = kind.encode()
    return name


def sse_frames(response_id: bytes, events: list[Event], after: int = -1) -> bytes:
    """Events as SSE frames (those after sequence number ``after``); one event, the usual case of a
    streamed chunk, without building a list."""
    if len(events) == 1:
        kind, seq, data = events[0]
        if seq <= after:
            return b""
        return b"event: %b\nid: %b:%d\ndata: %b\n\n" % (_event_line(kind), response_id, seq, data)
    return b"".join([sse_frame(response_id, kind, seq, data) for kind, seq, data in events if seq > after])
