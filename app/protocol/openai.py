"""OpenAI Chat Completions wire types: only the fields the gateway itself reads are typed.

Requests are lenient: the body is decoded to a dict first, validated against ``ChatRequest``
(which ignores unknown fields), and the dict itself travels on, so unknown fields pass through
to the provider.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from app.errors import InvalidRequest


class Message(msgspec.Struct):
    role: Annotated[str, msgspec.Meta(min_length=1)]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    tools: list[dict[str, Any]] | None = None


class ChatCompletionInput(msgspec.Struct, frozen=True):
    """A validated request: the typed view plus the client's own fields, untouched, for passthrough."""

    request: ChatRequest
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return self.request.model

    def include_usage(self) -> bool:
        return bool(self.request.stream_options and self.request.stream_options.include_usage)


_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_decoder = msgspec.json.Decoder()


_MISSING_RE = re.compile(r"missing required field `([^`]*)`")


def _param_of(exc: msgspec.ValidationError) -> str | None:
    """`... - at `$.messages[0]`` -> `messages[0]`, plus the missing field's name when one is missing."""
    text = str(exc)
    match = _FIELD_RE.search(text)
    path = match.group(1) if match else ""
    missing = _MISSING_RE.search(text)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return path or None


def parse_chat_body(raw: bytes) -> ChatCompletionInput:
    try:
        body = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError for invalid UTF-8 inside a string: still the client's body.
        raise InvalidRequest(f"The body is not valid JSON: {exc}") from exc
    return validate_chat_body(body)


def validate_chat_body(body: Any) -> ChatCompletionInput:
    if not isinstance(body, dict):
        raise InvalidRequest(f"The body must be a JSON object, got {type(body).__name__}.")
    try:
        request = msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError as exc:
        param = _param_of(exc)
        raise InvalidRequest(f"Invalid request: {exc}", code=param or "invalid_request", param=param) from exc
    return ChatCompletionInput(request=request, body=body)
