"""A cached answer, kept in both shapes: the whole ``chat.completion`` and its chunks.

A JSON request served from a stream's answer gets the assembled completion; a stream served from
a JSON answer gets chunks built from it. Content, tool calls and reasoning fields survive both ways.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.domain.chunks import Chunk, Usage
from app.providers.chunks import read_chunk

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class CachedAnswer(msgspec.Struct, frozen=True):
    completion: bytes  # chat.completion JSON
    chunks: list[bytes]  # chat.completion.chunk JSON, without the usage-only chunk
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def usage(self) -> Usage | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return Usage(prompt_tokens=self.prompt_tokens or 0, completion_tokens=self.completion_tokens or 0)


def _merge_tool_calls(into: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        index = delta.get("index", len(into))
        while len(into) <= index:
            into.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call = into[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        fn = delta.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]


def assemble(chunks: list[bytes], usage: Usage | None) -> bytes:
    """Chunks of one stream -> the chat.completion a JSON request would have got."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for raw in chunks:
        data = _decode(raw)
        if not head:
            head = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
        for choice in data.get("choices") or ():
            index = choice.get("index", 0)
            out = choices.setdefault(index, {"index": index, "message": {"role": "assistant"}, "finish_reason": None})
            message = out["message"]
            delta = choice.get("delta") or {}
            for text_field in ("content", "reasoning_content", "refusal"):
                if delta.get(text_field):
                    message[text_field] = message.get(text_field, "") + delta[text_field]
            if delta.get("role"):
                message["role"] = delta["role"]
            if delta.get("tool_calls"):
                _merge_tool_calls(message.setdefault("tool_calls", []), delta["tool_calls"])
            if choice.get("finish_reason"):
                out["finish_reason"] = choice["finish_reason"]
    for out in choices.values():
        out["message"].setdefault("content", None)
    completion: dict[str, Any] = {**head, "object": "chat.completion", "choices": [choices[i] for i in sorted(choices)]}
    if usage is not None:
        completion["usage"] = usage_dict(usage)
    return _encode(completion)


def split(completion_raw: bytes) -> list[bytes]:
    """A chat.completion -> chunks that carry the same message: one delta per choice, then its finish."""
    data = _decode(completion_raw)
    head = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
    head["object"] = "chat.completion.chunk"
    chunks: list[bytes] = []
    for choice in data.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant")}
        for text_field in ("content", "reasoning_content", "refusal"):
            if message.get(text_field):
                delta[text_field] = message[text_field]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        chunks.append(_encode({**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}))
        finish = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}
        chunks.append(_encode({**head, "choices": [finish]}))
    return chunks


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def replay_chunks(answer: CachedAnswer) -> list[Chunk]:
    """The chunks a stream replays, as the pipeline's Chunk (usage-only chunk last, when known)."""
    out = [read_chunk(raw) for raw in answer.chunks]
    usage = answer.usage
    if usage is not None and answer.chunks:
        head = _decode(answer.chunks[0])
        usage_chunk = {k: head[k] for k in ("id", "created", "model", "object") if k in head}
        usage_chunk.update(choices=[], usage=usage_dict(usage))
        out.append(Chunk(raw=_encode(usage_chunk), usage=usage, usage_only=True))
    return out
