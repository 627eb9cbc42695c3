"""OpenAI Embeddings wire types: the request, validated, and the response, rendered.

The relay asks the provider in the client's ``encoding_format`` (base64, little-endian float32s,
is what the OpenAI SDKs ask for by default); a vector goes out in the format it came in when the
client asked for that one, and is converted when not (a cached answer serves both encodings).
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Final, Literal

import msgspec

from app.domain.chat_request import _param_of, decode_json, provider_control
from app.domain.chunks import estimate_text_tokens
from app.domain.errors import InvalidRequest, UpstreamUnavailable

#: OpenAI's own bounds: at most 2048 inputs per request, each a non-empty string or token array.
MAX_INPUTS: Final = 2048
MAX_TOKENS_PER_INPUT: Final = 8192


def _token(value: Any) -> bool:
    return type(value) is int and value >= 0


def _tokens(value: Any) -> bool:
    return isinstance(value, list) and 0 < len(value) <= MAX_TOKENS_PER_INPUT and all(_token(t) for t in value)


def valid_input(value: Any) -> bool:
    """A non-empty string, a list of them, a token array, or a list of token arrays (OpenAI's four
    shapes; msgspec cannot hold a union of several list types, so this is checked by hand)."""
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not 0 < len(value) <= MAX_INPUTS:
        return False
    if all(isinstance(v, str) and v for v in value):
        return True
    return _tokens(value) or all(_tokens(v) for v in value)


class EmbeddingsRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=65536)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    #: Fields OpenAI does not define (a provider's own, e.g. ``input_type``): body fields for the
    #: relay's provider, never arguments of the provider layer (those are refused at parse).
    extra: dict[str, Any] = {}


_FIELDS: Final = frozenset(EmbeddingsRequest.__struct_fields__) - {"extra"}


def _validation_error(exc: msgspec.ValidationError) -> InvalidRequest:
    param = _param_of(exc)
    param = param[:128] if param else None
    return InvalidRequest(f"Invalid request: {str(exc)[:300]}", code=param or "invalid_request", param=param)


def parse_embeddings_body(raw: bytes) -> EmbeddingsRequest:
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest(f"The body must be a JSON object, got {type(body).__name__}.")
    for name in body:
        if provider_control(name):
            raise InvalidRequest(
                f"`{name[:64]}` is a setting of the gateway's provider layer and cannot be set by a request.",
                code="unsupported_parameter",
                param=name[:64],
            )
    if "extra" in body:
        raise InvalidRequest("`extra` is not a field of this API.", code="unsupported_parameter", param="extra")
    try:
        request = msgspec.convert(body, EmbeddingsRequest)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc) from exc
    request.extra = {k: v for k, v in body.items() if k not in _FIELDS}
    field = "input"  # a field that fails validation is its own code, as on every route
    if field not in body:
        raise InvalidRequest("Invalid request: `input` is required.", code=field, param=field)
    if not valid_input(body[field]):
        raise InvalidRequest(
            "Invalid request: `input` must be a non-empty string, a list of them, a token array, "
            f"or a list of token arrays (at most {MAX_INPUTS} inputs).",
            code=field,
            param=field,
        )
    return request


def input_size(value: Any) -> tuple[int, int]:
    """How many inputs, and an estimate of their tokens (the gateway's one rule for text, erring
    high: four ASCII characters a token, one a character otherwise; or the tokens given). Four bytes
    a token counted Tamil at a third and CJK at a half of what a tokenizer makes of them."""
    if isinstance(value, str):
        return 1, estimate_text_tokens(value) + 1
    if value and isinstance(value[0], int):
        return 1, len(value)
    tokens = sum(len(v) if isinstance(v, list) else estimate_text_tokens(v) + 1 for v in value)
    return len(value), tokens


def upstream_body(request: EmbeddingsRequest, upstream_model: str) -> dict[str, Any]:
    # The client's format: base64 (the OpenAI SDKs' default) is about a quarter of floats' JSON, and a
    # provider's base64 goes on as it came.
    body: dict[str, Any] = {**request.extra, "model": upstream_model, "input": request.input}
    body["encoding_format"] = request.encoding_format
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user is not None:
        body["user"] = request.user
    return body


class _Item(msgspec.Struct):
    embedding: msgspec.Raw
    index: int = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    total_tokens: int | None = 0


class _Reply(msgspec.Struct):
    data: list[_Item]
    usage: _Usage | None = None


_reply = msgspec.json.Decoder(_Reply)
_floats = msgspec.json.Decoder(list[float])
_encode = msgspec.json.encode
#: What a JSON array of numbers is made of, but for its brackets.
_NUMBER_BYTES: Final = b"0123456789.,-+eE \t\r\n"


class Embeddings(msgspec.Struct, frozen=True):
    """A provider's answer: each input's vector (in input order) as the JSON of its floats or of its
    base64 string (little-endian float32s), and its input tokens. The JSON is the provider's own,
    checked to be an array of numbers or whole float32s: an answer in the same format splices it in
    as it came rather than formatting every float again, which cost most of a call's CPU."""

    vectors: list[msgspec.Raw]
    prompt_tokens: int


def _is_base64(vector: msgspec.Raw) -> bool:
    return bytes(memoryview(vector)[:1]) == b'"'


def _vector(item: _Item) -> msgspec.Raw:
    raw = item.embedding
    if _is_base64(raw):  # checked to be whole float32s, kept as it came
        if len(base64.b64decode(msgspec.json.decode(raw, type=str), validate=True)) % 4:
            raise ValueError("a base64 embedding is not whole 32-bit floats")
        return raw
    # An array of numbers or a ValidationError: nothing else reaches a client. ``raw`` is already
    # valid JSON (the reply's decoder checked it), so once the number bytes are taken out, ``[]`` left
    # means one flat array of numbers; a quarter of the cost of decoding its floats.
    if bytes(raw).translate(None, _NUMBER_BYTES) != b"[]":
        raise msgspec.ValidationError("an embedding is not an array of numbers")
    return raw


def read_reply(raw: bytes) -> Embeddings:
    try:
        reply = _reply.decode(raw)
        vectors = [_vector(item) for item in sorted(reply.data, key=lambda i: i.index)]
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise UpstreamUnavailable("The provider's embeddings answer was unreadable.") from exc
    usage = reply.usage
    # A provider's count is untrusted: a negative one would credit the key's budget.
    tokens = max(0, usage.prompt_tokens or 0) if usage is not None else 0
    return Embeddings(vectors=vectors, prompt_tokens=tokens)


def cached_form(embeddings: Embeddings) -> bytes:
    return _encode({"vectors": embeddings.vectors, "prompt_tokens": embeddings.prompt_tokens})


def from_cached(raw: bytes) -> Embeddings:
    return msgspec.json.decode(raw, type=Embeddings)


def _floats_of(vector: msgspec.Raw) -> msgspec.Raw:
    """A vector as the JSON of its floats."""
    if not _is_base64(vector):
        return vector
    data = base64.b64decode(msgspec.json.decode(vector, type=str))
    return msgspec.Raw(_encode(list(struct.unpack(f"<{len(data) // 4}f", data))))


def _base64(vector: msgspec.Raw) -> str | msgspec.Raw:
    """A vector as base64 of little-endian float32s."""
    if _is_base64(vector):
        return vector
    floats = _floats.decode(vector)
    try:
        packed = struct.pack(f"<{len(floats)}f", *floats)
    except OverflowError:  # a provider's value beyond float32's range: its answer cannot be given so
        raise UpstreamUnavailable("The provider's embeddings do not fit 32-bit floats.") from None
    return base64.b64encode(packed).decode("ascii")


def render(embeddings: Embeddings, model: str, encoding_format: str) -> bytes:
    """OpenAI's ``list`` of ``embedding`` objects, under the public model name."""
    encode = _base64 if encoding_format == "base64" else _floats_of
    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(embeddings.vectors)]
    tokens = embeddings.prompt_tokens
    return msgspec.json.encode(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )
