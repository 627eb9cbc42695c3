"""What the gateway reads of a provider's chunk: one msgspec view, decoded only as far as needed.

Every path goes through ``read_chunk``: the relay for the provider's bytes, the LiteLLM path for
LiteLLM's re-encoded chunk, the cache for replayed chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from app.domain.chunks import Chunk, Usage, estimate_text_tokens, web_searches_of
from app.domain.errors import GatewayError
from app.providers.translate import from_provider_reply

_NO_RAW = msgspec.Raw(b"")


def _present(raw: msgspec.Raw) -> bool:
    # msgspec.Raw cannot sit in a union with None, so "absent" is an empty Raw and JSON null is b"null".
    return len(raw) > 0 and bytes(raw) != b"null"


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: msgspec.Raw = _NO_RAW  # never decoded: only its presence matters


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    #: Tools the provider ran itself (LiteLLM's and the Anthropic relay's usage carry Anthropic's):
    #: read leniently (``web_searches_of``), so that no shape of it fails a stream.
    server_tool_use: Any = None


class _ChunkView(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: msgspec.Raw = _NO_RAW


class _CompletionView(msgspec.Struct):
    usage: _Usage | None = None


class _ErrorBody(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None
    type: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | str | None = None


_chunk_view = msgspec.json.Decoder(_ChunkView)
_completion_view = msgspec.json.Decoder(_CompletionView)
_error_view = msgspec.json.Decoder(_ErrorEnvelope)
_error_body = msgspec.json.Decoder(_ErrorBody)
_loose = msgspec.json.Decoder()
_encode = msgspec.json.encode


def _usage(u: _Usage | None) -> Usage | None:
    if u is None:
        return None
    searches = web_searches_of(u.server_tool_use) if u.server_tool_use is not None else 0
    return Usage(prompt_tokens=u.prompt_tokens or 0, completion_tokens=u.completion_tokens or 0, web_searches=searches)


def read_chunk(data: bytes) -> Chunk:
    """A ``chat.completion.chunk``'s JSON -> Chunk; raises the mapped error for an in-stream ``error``.

    Runs once per provider event on every relayed stream, so it is written flat: locals instead of
    repeated attribute reads, the token estimate only for text that is there, the Chunk built from
    positional arguments (the field order of ``Chunk``).
    """
    view = _chunk_view.decode(data)
    if view.error and _present(view.error):  # an empty Raw (absent) is false: no call per chunk
        raise error_from_reply(502, bytes(view.error), {}, in_stream=True)
    has_content = False
    finish = None
    tokens = 0
    choices = view.choices
    if choices:
        for choice in choices:
            d = choice.delta
            if d is not None:
                content, reasoning, calls = d.content, d.reasoning_content, d.tool_calls
                if content or reasoning or (calls and _present(calls)):
                    has_content = True
                    estimate = (len(calls) + 3) // 4
                    if content:
                        estimate += estimate_text_tokens(content)
                    if reasoning:
                        estimate += estimate_text_tokens(reasoning)
                    tokens += estimate or 1
            if choice.finish_reason:
                finish = choice.finish_reason
    usage = _usage(view.usage)
    if b"\n" in data:
        data = _encode(_loose.decode(data))  # SSE framing needs one line; providers almost never do this
    return Chunk(data, has_content, finish, usage, usage is not None and not choices, tokens)


def completion_usage(raw: bytes) -> Usage | None:
    return _usage(_completion_view.decode(raw).usage)


def error_from_reply(status: int, body: bytes, headers: Mapping[str, str], *, in_stream: bool = False) -> GatewayError:
    """A provider's error reply (or an in-stream ``error`` member) -> the gateway error (docs/errors.md)."""
    message, code = "", None
    try:
        envelope = _ErrorEnvelope(error=_error_body.decode(body)) if in_stream else _error_view.decode(body)
        if isinstance(envelope.error, _ErrorBody):
            message = envelope.error.message or ""
            code = str(envelope.error.code) if envelope.error.code is not None else None
        elif isinstance(envelope.error, str):
            message = envelope.error
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = body[:500].decode("utf-8", "replace")
    return from_provider_reply(
        status, message, code, headers.get("retry-after") or headers.get("Retry-After"), in_stream=in_stream
    )
