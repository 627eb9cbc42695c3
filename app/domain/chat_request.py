"""OpenAI Chat Completions wire types, and the one rule for what a client may send on.

The rule ("Request fields"):
- OpenAI's own request fields are validated here (type and range) and passed to the provider.
- Provider-layer controls (``api_base``, ``api_key``, ``num_retries``, ``mock_response``, ...) are
  refused with a 400 naming the field: they are arguments of the provider layer, and a client that
  could set them could point the gateway's provider key at its own server.
- Every other field is a body field for the provider: the relay writes it into the upstream body,
  the LiteLLM path hands it over as ``extra_body``, never as an argument.

Requests are decoded to a dict first (bounded in depth), validated against ``ChatRequest``, and
the dict itself travels on, so unknown fields keep their exact values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import accumulate
from typing import Annotated, Any, Final

import msgspec

from app.domain.errors import InvalidRequest

#: Deepest nesting of objects and arrays a request may have. Real requests (messages with content
#: parts, tool schemas) stay under 20; the limit exists so that no decoder, encoder or walk of
#: ours recurses without bound on a 2 KB body of brackets.
MAX_JSON_DEPTH: Final = 64


class Message(msgspec.Struct):
    role: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


Number = float
Stop = str | list[str] | None


class ChatRequest(msgspec.Struct):
    """OpenAI's chat completion request fields, each typed as OpenAI documents it.

    Only type and range are checked: what a given model supports is the provider's to say.
    """

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stop: Stop = None
    seed: int | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Number] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    metadata: dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]] | None = (
        None
    )
    store: bool | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


#: OpenAI's own request fields: validated above, passed to the provider as parameters.
OPENAI_FIELDS: Final = frozenset(ChatRequest.__struct_fields__)

#: Arguments of the provider layer (LiteLLM's, the OpenAI SDK's) that a request body must never set.
PROVIDER_CONTROLS: Final = frozenset(
    {
        "api_base", "base_url", "api_key", "api_version", "api_type", "azure_ad_token", "azure_ad_token_provider",
        "organization", "deployment_id", "custom_llm_provider", "num_retries", "max_retries", "fallbacks",
        "context_window_fallback_dict", "timeout", "request_timeout", "stream_timeout", "mock_response",
        "mock_timeout", "mock_tool_calls", "extra_headers", "headers", "extra_query", "extra_body", "client",
        "model_list", "cache", "caching", "ssl_verify", "logger_fn", "no-log", "proxy_server_request",
        "secret_fields", "region_name", "model_info", "base_model", "cooldown_time", "retry_policy",
        "max_budget", "budget_duration", "tpm", "rpm", "guardrails", "acompletion", "async_call", "id",
    }
)  # fmt: skip
#: Prefixes of whole families of provider-layer arguments (credentials, pricing, LiteLLM internals).
PROVIDER_CONTROL_PREFIXES: Final = (
    "litellm_", "aws_", "vertex_", "azure_", "api_", "input_cost_", "output_cost_", "_",
)  # fmt: skip


def provider_control(name: str) -> bool:
    return name in PROVIDER_CONTROLS or name.startswith(PROVIDER_CONTROL_PREFIXES)


class NativeRequest(msgspec.Struct, frozen=True):
    """A request in its provider's own API, for a deployment that speaks it (the Messages API's
    body for an Anthropic deployment): the client's body, already validated, and the API's headers
    the client chose (``anthropic-version``, ``anthropic-beta``)."""

    body: dict[str, Any]
    headers: dict[str, str]


class ChatCompletionInput(msgspec.Struct, frozen=True):
    """A validated request: the typed view plus the client's own fields, untouched, for passthrough."""

    request: ChatRequest
    body: dict[str, Any]
    #: W3C trace context for the provider's request (the gateway's own, never the client's fields).
    trace_headers: dict[str, str] | None = None
    #: The same request in Anthropic's Messages API, set only by the Messages route for a model
    #: whose deployments are all Anthropic ones (never from a client's field): an Anthropic
    #: deployment on the relay sends it instead of translating ``body`` back.
    anthropic: NativeRequest | None = None
    #: The same request without what only Anthropic takes, for a deployment that is not Anthropic's
    #: (a fallback of an Anthropic model); set by the Messages route only when such a fallback exists.
    #: An error instead: the request holds what no other provider takes (a PDF), refused there.
    portable: ChatCompletionInput | InvalidRequest | None = None
    #: The client's own body when ``body`` is a translation of it (a Messages or Responses request):
    #: an error about a value of the translation names where the client put it.
    client_body: dict[str, Any] | None = None

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def has_parts(self) -> bool:
        """Some message's content is a list of parts (images, files, audio, or text in parts)."""
        return any(isinstance(m.content, list) for m in self.request.messages)

    def include_usage(self) -> bool:
        return bool(self.request.stream_options and self.request.stream_options.include_usage)

    def openai_params(self, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """OpenAI's own fields the client set, as sent (minus ``exclude``)."""
        return {k: v for k, v in self.body.items() if k in OPENAI_FIELDS and k not in exclude}

    def extra_fields(self) -> dict[str, Any]:
        """Fields OpenAI does not define: body fields for the provider, nothing else."""
        return {k: v for k, v in self.body.items() if k not in OPENAI_FIELDS}


_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"missing required field `([^`]*)`")
_decoder = msgspec.json.Decoder()


def _param_of(exc: msgspec.ValidationError) -> str | None:
    """`... - at `$.messages[0]`` -> `messages[0]`, plus the missing field's name when one is missing."""
    text = str(exc)
    match = _FIELD_RE.search(text)
    path = match.group(1) if match else ""
    missing = _MISSING_RE.search(text)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return path or None


def decode_json(raw: bytes | str, what: str = "body") -> Any:
    """Decode client JSON with its nesting bounded: too deep or unreadable -> the client's 400."""
    data = raw.encode() if isinstance(raw, str) else raw
    check_depth(data, what)
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError for invalid UTF-8 inside a string: still the client's body.
        raise InvalidRequest(f"The {what} is not valid JSON: {str(exc)[:200]}") from exc
    except RecursionError as exc:  # belt and braces: the scan above should have caught it
        raise InvalidRequest(f"The {what} is nested too deeply.", code="too_deep") from exc


def check_depth(data: bytes, what: str = "body") -> None:
    """Refuse JSON nested deeper than ``MAX_JSON_DEPTH`` before any decoder recurses into it."""
    # Counting openers is C-speed; only a document with enough of them to be too deep is looked at.
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and _deeper_than(data, MAX_JSON_DEPTH):
        raise InvalidRequest(f"The {what} is nested deeper than {MAX_JSON_DEPTH} levels.", code="too_deep")


#: An opener as the byte 1, a closer as 255 (-1 read as a signed byte), both kinds alike: only the
#: nesting counts. Everything else is deleted.
_AS_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_PAIR = b"\x01\xff"
#: Passes that take out the innermost pairs before the depth is summed up: what most bodies need.
_PEELS = 12


#: An escape: a backslash and the byte it escapes (a ``\\uXXXX``'s hex digits hold no quote or bracket).
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
#: Bytes per backslash above which the regular expression takes the escapes out (see below).
_SPARSE_ESCAPES = 64


def _without_escapes(data: bytes) -> bytes:
    """``data`` with its escapes taken out, so that every quote left opens or closes a string.

    Two ways, the same result, each the cheaper where it is used. ``bytes.replace`` searches a
    two-byte pattern a byte at a time over the whole body, whatever it finds, so a body with few
    escapes (any real one: prose and schemas) goes faster through one pass of the regular
    expression, which jumps from backslash to backslash; but the expression pays per match, so a
    body dense with escapes (a hostile one) goes through the replace passes, whose cost is the
    body's length. The threshold between them, and the figures, are in ``loadtests/README.md``. The
    passes take out ``\\\\`` pairs first, then ``\\"``: no other escape holds a quote or a bracket.
    """
    if data.count(b"\\") * _SPARSE_ESCAPES < len(data):
        return _ESCAPE.sub(b"", data)
    return data.replace(b"\\\\", b"").replace(b'\\"', b"")


def _deeper_than(data: bytes, limit: int) -> bool:
    """Whether ``data``'s arrays and objects nest deeper than ``limit``, brackets inside strings not
    counted. Every step runs over the bytes in C, none is a Python loop over them: a document that
    passes the count above is any request with tools (an agent's body is 50-200 KB of schemas),
    and a hostile one is as large as the body limit allows."""
    # Escapes first, read left to right as a decoder reads them.
    text = _without_escapes(data) if b"\\" in data else data
    # Then strings: with their escaped quotes gone, every other piece between quotes is one.
    if b'"' in text:
        text = b"".join(text.split(b'"')[::2])
    brackets = text.translate(_AS_STEPS, _NOT_BRACKETS)
    # Each pass takes out every innermost pair (a container holding no container), so a document
    # nested n deep is empty after n passes: a few passes settle most bodies. A pass that takes out
    # nothing leaves brackets that do not pair: not JSON, which the decoder refuses.
    peeled = 0
    while brackets and peeled < min(_PEELS, limit + 1):
        fewer = brackets.replace(_PAIR, b"")
        if len(fewer) == len(brackets):
            return False
        brackets, peeled = fewer, peeled + 1
    if not brackets:
        return peeled > limit
    # What is left is summed up once: its deepest point, plus the levels already taken out.
    return peeled + max(accumulate(memoryview(brackets).cast("b"))) > limit


def one_message_input(model: str, text: str) -> ChatCompletionInput:
    """A chat request of one user message holding ``text``: how a call that is not a chat completion
    (an embeddings call, a prepared Responses turn) is shown to the limiter, which counts a chat
    request's messages and names its model."""
    return ChatCompletionInput(
        request=ChatRequest(model=model, messages=[Message(role="user", content=text)]),
        body={"model": model, "messages": [{"role": "user", "content": text}]},
    )


def parse_chat_body(raw: bytes) -> ChatCompletionInput:
    return validate_chat_body(decode_json(raw))


def validate_chat_body(body: Any) -> ChatCompletionInput:
    if not isinstance(body, dict):
        raise InvalidRequest(f"The body must be a JSON object, got {type(body).__name__}.")
    for name in body:
        if provider_control(name):
            raise InvalidRequest(
                f"`{name[:64]}` is a setting of the gateway's provider layer and cannot be set by a request.",
                code="unsupported_parameter",
                param=name[:64],
            )
    try:
        request = msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError as exc:
        param = _param_of(exc)
        param = param[:128] if param else None
        message = f"Invalid request: {str(exc)[:300]}"
        raise InvalidRequest(message, code=param or "invalid_request", param=param) from exc
    _check_parts(request.messages)
    return ChatCompletionInput(request=request, body=body)


def _url_member(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("url"), str))


#: The member each of OpenAI's content part types needs, and what it must be. Parts of other types
#: are the provider's to judge; these are checked because LiteLLM's translations index them
#: blindly (a part ``{"type": "image_url"}`` without one was a KeyError there: a 502).
_PART_MEMBERS: Final[dict[str, tuple[str, Callable[[Any], bool], str]]] = {
    "text": ("text", lambda v: isinstance(v, str), "a string"),
    "image_url": ("image_url", _url_member, "a URL or an object with a `url`"),
    "input_audio": ("input_audio", lambda v: isinstance(v, dict), "an object"),
    "file": ("file", lambda v: isinstance(v, dict), "an object"),
}


def _check_parts(messages: list[Message]) -> None:
    for i, message in enumerate(messages):
        content = message.content
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type")
            rule = _PART_MEMBERS.get(kind) if isinstance(kind, str) else None
            if rule is None:
                continue
            member, valid, what = rule
            if not valid(part.get(member)):
                param = f"messages[{i}].content[{j}].{member}"
                raise InvalidRequest(f"Invalid request: `{param}` must be {what}.", code=param, param=param)
