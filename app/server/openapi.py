"""What ``/schema`` says about endpoints whose handlers read the raw body or the raw query string.

The chat handler parses its body itself (for speed, and so that unknown fields pass through to the
provider), and the search handler reads its query string itself (to reject unknown parameters), so
Litestar cannot infer either from their signatures. The shapes are declared here instead: request
bodies and query parameters through an ``operation_class``, responses through ``ResponseSpec``s.
The request schema is generated from the very Struct that validates requests, so the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)

from app.domain.chat_request import ChatRequest
from app.domain.errors import ErrorBody

# -- documentation-only shapes: what the provider's answer looks like on the wire --------------------


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(msgspec.Struct):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    reasoning_content: str | None = None


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletion(msgspec.Struct):
    """The OpenAI ``chat.completion`` object, as the provider sent it."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class Delta(msgspec.Struct):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    reasoning_content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct):
    """One ``data:`` line of a stream: the OpenAI ``chat.completion.chunk`` object."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# -- msgspec JSON Schema -> Litestar's OpenAPI objects ------------------------------------------------

_LISTS = {"anyOf": "any_of", "oneOf": "one_of", "allOf": "all_of"}
_SCHEMAS = {"items": "items", "additionalProperties": "additional_properties"}
_PLAIN = {
    "title": "title",
    "description": "description",
    "default": "default",
    "enum": "enum",
    "const": "const",
    "required": "required",
    "format": "format",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_items",
    "maxItems": "max_items",
    "pattern": "pattern",
}


def _schema(node: dict[str, Any], defs: dict[str, Any]) -> Schema:
    ref = node.get("$ref")
    if isinstance(ref, str):
        # Inlined: these shapes are small and not recursive, and Litestar rebuilds components/schemas
        # from its own registry, so a hand-made component would be dropped.
        return _schema(defs[ref.rsplit("/", 1)[1]], defs)
    kwargs: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            kwargs["type"] = OpenAPIType(value) if isinstance(value, str) else [OpenAPIType(v) for v in value]
        elif key == "properties":
            kwargs["properties"] = {name: _schema(sub, defs) for name, sub in value.items()}
        elif key in _LISTS:
            kwargs[_LISTS[key]] = [_schema(sub, defs) for sub in value]
        elif key in _SCHEMAS:
            kwargs[_SCHEMAS[key]] = _schema(value, defs) if isinstance(value, dict) else value
        elif key == "required" and not value:
            continue  # msgspec writes `required: []` for all-optional structs; say nothing instead
        elif key in _PLAIN:
            kwargs[_PLAIN[key]] = value
    return Schema(**kwargs)


def schema_of(struct: type[msgspec.Struct]) -> Schema:
    """The OpenAPI schema of a msgspec Struct, from msgspec's own JSON Schema (constraints included)."""
    generated = msgspec.json.schema(struct)
    return _schema(generated, generated.get("$defs", {}))


# -- error responses ---------------------------------------------------------------------------------

#: Why each status happens, for the endpoints that can return it (the body is always ErrorBody).
ERROR_CAUSES: dict[int, str] = {
    400: "The body is not JSON or fails validation, the context window is exceeded, or the provider "
    "rejected the request (`invalid_request_error`).",
    401: "Missing or wrong gateway key (`authentication_error`, code `invalid_api_key`).",
    404: "The model is not in the catalogue (code `model_not_found`).",
    413: "The body is larger than `server.max_body_bytes` (code `payload_too_large`).",
    415: "Content-Type is not application/json (code `unsupported_media_type`).",
    429: "A rate limit was reached (code `rate_limit_exceeded`); the `Retry-After` header says when to retry.",
    500: "An unexpected error (`server_error`, code `internal_error`); in production the message is generic.",
    502: "The provider could not be reached, rejected the gateway's credentials, or does not know the "
    "configured model (`upstream_error`).",
    503: "The provider is failing or overloaded (`upstream_error`, code `upstream_overloaded`).",
    504: "The provider's first chunk or whole answer came too late (`timeout_error`, code `upstream_timeout`).",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=ErrorBody, description=ERROR_CAUSES[status], generate_examples=False)
        for status in statuses
    }


CHAT_ERRORS = (400, 401, 404, 413, 415, 429, 500, 502, 503, 504)

# -- POST /v1/chat/completions ------------------------------------------------------------------------

SSE_DESCRIPTION = (
    'With `"stream": true` (or `stream` absent and `Accept: text/event-stream`): an SSE stream. Each '
    "event is `id: <stream id>:<seq>` then `data: <chat.completion.chunk>` (the schema below) and a blank "
    "line; `seq` starts at 1. The last event is `data: [DONE]`. `: keep-alive` comments are written "
    "while the provider is silent. An error after the headers is `event: error` with "
    '`data: {"error": {...}}`, and the stream then ends without `[DONE]`. Header `X-Stream-ID` names the stream.'
)
SSE_EXAMPLE = (
    'id: 3f2a:1\ndata: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
    '"model":"demo","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"}}]}\n\n'
    "id: 3f2a:2\ndata: [DONE]\n\n"
)
REQUEST_EXAMPLE = {"model": "demo", "messages": [{"role": "user", "content": "Hello!"}], "stream": True}


def chat_request_schema() -> Schema:
    schema = schema_of(ChatRequest)
    schema.additional_properties = True
    schema.description = (
        "An OpenAI Chat Completions request. The fields listed are the ones the gateway validates; every "
        "other OpenAI field (`response_format`, `seed`, `stop`, `tool_choice`, `user`, ...) passes through "
        "to the provider. `model` is a public model name from the gateway's configuration."
    )
    return schema


def chunk_schema() -> Schema:
    # OpenAI's own API description gives text/event-stream the chunk's schema: what each `data:` carries.
    schema = schema_of(ChatCompletionChunk)
    schema.description = SSE_DESCRIPTION
    return schema


CHAT_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(
        data_container=ChatCompletion,
        description="A `chat.completion` object (JSON), or an SSE stream of `chat.completion.chunk` events "
        "(text/event-stream). Header `X-Cache: HIT | MISS | BYPASS` when the response cache is on.",
        generate_examples=False,
    ),
    **error_responses(*CHAT_ERRORS),
}


@dataclass
class ChatOperation(Operation):
    """POST chat completions: the request body, and the SSE form of the 200 response."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="JSON (Content-Type: application/json, or none).",
            content={
                "application/json": OpenAPIMediaType(
                    schema=chat_request_schema(),
                    examples={"stream": Example(summary="A streamed chat", value=REQUEST_EXAMPLE)},
                )
            },
        )
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                **(ok.content or {}),
                "text/event-stream": OpenAPIMediaType(
                    schema=chunk_schema(),
                    examples={"stream": Example(summary="Two events", value=SSE_EXAMPLE)},
                ),
            }


# -- GET /api/models/search ---------------------------------------------------------------------------


def _query(name: str, schema: Schema, description: str, *, explode: bool | None = None) -> Parameter:
    return Parameter(
        name=name, param_in="query", required=False, schema=schema, description=description, explode=explode
    )


SEARCH_PARAMETERS: list[Parameter] = [
    _query(
        "capability",
        Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.STRING)),
        "Models with every one of these capabilities (`vision`, `tools`, `reasoning`, `json_mode`, ...). "
        "May repeat, or be comma-separated.",
        explode=True,
    ),
    _query("provider", Schema(type=OpenAPIType.STRING), "LiteLLM provider, e.g. `openai`."),
    _query("mode", Schema(type=OpenAPIType.STRING), "LiteLLM mode, e.g. `chat`."),
    _query("category", Schema(type=OpenAPIType.STRING), "A category from /api/models/categories."),
    _query(
        "min_context",
        Schema(type=OpenAPIType.INTEGER, minimum=0),
        "At least this many input tokens; models whose window is unknown are left out.",
    ),
    _query(
        "max_input_cost",
        Schema(type=OpenAPIType.NUMBER, minimum=0),
        "At most this price, USD per million input tokens.",
    ),
]


@dataclass
class SearchOperation(Operation):
    """GET /api/models/search: its query parameters (the handler parses them itself, strictly)."""

    def __post_init__(self) -> None:
        self.parameters = [*(self.parameters or []), *SEARCH_PARAMETERS]
