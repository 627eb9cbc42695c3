"""An Anthropic Messages request -> the gateway's chat completions request.

Every configured chat model serves the Messages API through the chat pipeline, so the request is
translated into the OpenAI-shaped body that pipeline takes:

- ``system`` (string or text blocks) and mid-conversation ``system`` messages -> system messages;
- user ``text`` / ``image`` / ``document`` (text) blocks -> content parts; ``tool_result`` blocks ->
  ``tool`` messages, placed before the rest of their turn as OpenAI requires;
- assistant ``text`` + ``tool_use`` -> one assistant message with ``tool_calls``;
- ``tools`` (``input_schema``) -> function tools; ``tool_choice`` auto/any/tool/none ->
  auto/required/the function/none; ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``;
- ``stop_sequences`` -> ``stop``; ``metadata.user_id`` -> ``user``; ``max_tokens``, ``temperature``,
  ``top_p`` as they are.

For a model whose deployments are all Anthropic ones (``passthrough``) the client's own body also
travels on (``native_request``): an Anthropic deployment on the relay sends it to Anthropic as it
came, and this translation serves only the pipeline's own reading of the request (limits, cache
key, logs) and a deployment that goes through LiteLLM (``fast_path = false``). For that one, what
only Anthropic has travels on in the shape LiteLLM's Anthropic mapping hands to Anthropic:
``cache_control`` marks on blocks, system blocks and tools, thinking blocks with their signatures
(``thinking_blocks`` on the assistant message), ``thinking``, ``top_k`` and the request's
Anthropic-only controls (``context_management``, ``output_config``, ...). For every other provider those are dropped:
they mean nothing to it, and an OpenAI-wire provider refuses fields it does not know. Thinking
blocks of earlier turns are dropped too (their signatures are only Anthropic's to check).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from app.api.messages.wire import (
    Base64Source,
    Block,
    DocumentBlock,
    ImageBlock,
    InputMessage,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    TextSource,
    ThinkingBlock,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)
from app.domain.chat_request import (
    ChatCompletionInput,
    ChatRequest,
    NativeRequest,
    _param_of,
    decode_json,
    provider_control,
)
from app.domain.errors import InvalidRequest
from app.providers.anthropic_fields import ANTHROPIC_BODY_FIELDS

#: Request fields the translation reads itself; every other top-level field is an Anthropic-only
#: control (``context_management``, ``output_config``, ``service_tier``, ``container``, ...).
_OWN: Final = frozenset(MessagesRequest.__struct_fields__)
#: Anthropic-only controls never passed on, even to Anthropic: the gateway does not run them for a
#: client (remote MCP servers, containers and the like reach out from the provider on the
#: provider's account), and none of them is needed for a conversation.
_NEVER: Final = frozenset({"mcp_servers", "container"})
#: The client's request headers an Anthropic deployment is sent, when it sends the client's own body.
NATIVE_HEADERS: Final = ("anthropic-version", "anthropic-beta")
#: The longest ``user`` the chat request accepts (OpenAI's limit): a longer ``metadata.user_id``
#: (Claude Code's is a JSON object) is not passed on rather than refused.
_USER_MAX: Final = 512
#: Thinking budgets (tokens) up to which the reasoning effort is ``low``, then ``medium``; above, ``high``.
_LOW_BUDGET: Final = 2048
_MEDIUM_BUDGET: Final = 8192


def parse_messages_body(raw: bytes, *, require_max_tokens: bool = True) -> tuple[MessagesRequest, dict[str, Any]]:
    """Bytes -> the validated request and the body dict (its unknown fields untouched)."""
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
    try:
        request = msgspec.convert(body, MessagesRequest)
    except msgspec.ValidationError as exc:
        param = _param_of(exc)
        param = param[:128] if param else None
        raise InvalidRequest(
            f"Invalid request: {str(exc)[:300]}", code=param or "invalid_request", param=param
        ) from exc
    if require_max_tokens and request.max_tokens is None:
        field = "max_tokens"  # a field that fails validation is its own code, as on every route
        raise InvalidRequest("Invalid request: `max_tokens` is required.", code=field, param=field)
    return request, body


def _image_url(source: Base64Source | UrlSource, where: str) -> str:
    if isinstance(source, UrlSource):
        return source.url
    if not source.media_type.startswith("image/"):
        raise InvalidRequest(f"`{where}.source.media_type` must be an image type.", param=f"{where}.source.media_type")
    return f"data:{source.media_type};base64,{source.data}"


def _cached(part: dict[str, Any], block: Any, passthrough: bool) -> dict[str, Any]:
    mark = getattr(block, "cache_control", None)
    if passthrough and mark is not None:
        part["cache_control"] = mark
    return part


def _document_text(block: DocumentBlock, where: str) -> str:
    source = block.source
    if isinstance(source, TextSource):
        return source.data
    if isinstance(source, Base64Source) and source.media_type.startswith("text/"):
        try:
            return base64.b64decode(source.data, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"`{where}.source.data` is not base64 UTF-8 text.", param=f"{where}.source") from exc
    raise InvalidRequest(
        f"`{where}`: only text documents can be given to this model.", code="unsupported_content", param=where
    )


def _part(block: TextBlock | ImageBlock | DocumentBlock, where: str, passthrough: bool) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return _cached({"type": "text", "text": block.text}, block, passthrough)
    if isinstance(block, ImageBlock):
        url = _image_url(block.source, where)
        return _cached({"type": "image_url", "image_url": {"url": url}}, block, passthrough)
    source = block.source
    if passthrough and isinstance(source, Base64Source) and not source.media_type.startswith("text/"):
        # A PDF for an Anthropic model: the relay sends the client's own block; LiteLLM's Anthropic
        # mapping makes a document of a file part.
        data = f"data:{source.media_type};base64,{source.data}"
        return _cached({"type": "file", "file": {"file_data": data}}, block, passthrough)
    if passthrough and isinstance(source, UrlSource):
        # Never fetched by the gateway: passed on where the deployment's provider takes file URLs.
        return _cached({"type": "file", "file": {"file_id": source.url}}, block, passthrough)
    return _cached({"type": "text", "text": _document_text(block, where)}, block, passthrough)


def _tool_result_content(block: ToolResultBlock, where: str, passthrough: bool) -> str | list[dict[str, Any]]:
    if isinstance(block.content, str):
        text = block.content
        return f"Error: {text}" if block.is_error and text else text
    parts = [_part(p, f"{where}.content[{i}]", passthrough) for i, p in enumerate(block.content)]
    if all(p["type"] == "text" and "cache_control" not in p for p in parts):
        # Plain text is what every provider takes in a tool message.
        text = "\n".join(p["text"] for p in parts)
        return f"Error: {text}" if block.is_error and text else text
    return parts


#: The tool message's note when its result had images (they follow, in the next user message), and
#: the line before each tool's images there.
IMAGES_FOLLOW: Final = "(the result's images are in the next message)"
IMAGES_OF: Final = "Images returned by tool call"


def _user_messages(blocks: list[Block], where: str, passthrough: bool) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []  # from tool results, for a provider that takes none in a tool message
    for i, block in enumerate(blocks):
        at = f"{where}.content[{i}]"
        if isinstance(block, ToolResultBlock):
            content = _tool_result_content(block, at, passthrough)
            if not passthrough and isinstance(content, list):
                # OpenAI's tool messages take text only (an image part is a 400): the text stays in
                # the tool message and the images go to the user message that follows the results,
                # each tool's under a line naming its call.
                shown = [p for p in content if p["type"] != "text"]
                images += [{"type": "text", "text": f"{IMAGES_OF} {block.tool_use_id}:"}, *shown]
                text = "\n".join(p["text"] for p in content if p["type"] == "text")
                text = f"{text}\n{IMAGES_FOLLOW}" if text else IMAGES_FOLLOW
                content = f"Error: {text}" if block.is_error else text
            tools.append(_cached({"role": "tool", "tool_call_id": block.tool_use_id, "content": content}, block, False))
        elif isinstance(block, TextBlock | ImageBlock | DocumentBlock):
            parts.append(_part(block, at, passthrough))
        else:
            raise InvalidRequest(f"`{at}`: a {block_type(block)} block belongs to an assistant message.", param=at)
    out = tools
    if images or parts:
        out.append({"role": "user", "content": images + parts})
    return out


def block_type(block: Block) -> str:
    return str(type(block).__struct_config__.tag)


def _assistant_message(blocks: list[Block], where: str, passthrough: bool) -> dict[str, Any]:
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        at = f"{where}.content[{i}]"
        if isinstance(block, TextBlock):
            texts.append(_cached({"type": "text", "text": block.text}, block, passthrough))
        elif isinstance(block, ToolUseBlock):
            arguments = msgspec.json.encode(block.input).decode()
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif isinstance(block, ThinkingBlock):
            if passthrough:
                entry: dict[str, Any] = {"type": "thinking", "thinking": block.thinking}
                if block.signature is not None:
                    entry["signature"] = block.signature
                thinking.append(entry)
        elif isinstance(block, RedactedThinkingBlock):
            if passthrough:
                thinking.append({"type": "redacted_thinking", "data": block.data})
        else:
            raise InvalidRequest(f"`{at}`: a {block_type(block)} block belongs to a user message.", param=at)
    message: dict[str, Any] = {"role": "assistant"}
    if passthrough and any("cache_control" in t for t in texts):
        message["content"] = texts
    elif texts:
        message["content"] = "".join(t["text"] for t in texts)
    else:
        # No text: None beside tool calls (OpenAI's shape); alone (a turn that only thought, whose
        # thinking other providers do not get) an empty text, as OpenAI refuses an assistant message
        # with neither content nor calls, and dropping the turn would put two user turns together.
        message["content"] = None if calls or thinking else ""
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
    return message


def _system_message(system: str | list[TextBlock], passthrough: bool) -> dict[str, Any]:
    if isinstance(system, str):
        return {"role": "system", "content": system}
    if passthrough and any(b.cache_control is not None for b in system):
        return {"role": "system", "content": [_part(b, "system", True) for b in system]}
    return {"role": "system", "content": "\n\n".join(b.text for b in system)}


def _messages(request: MessagesRequest, passthrough: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append(_system_message(request.system, passthrough))
    for i, message in enumerate(request.messages):
        out.extend(_message(message, f"messages[{i}]", passthrough))
    return out


def _message(message: InputMessage, where: str, passthrough: bool) -> list[dict[str, Any]]:
    content = message.content
    if message.role == "system":
        if isinstance(content, str):
            return [{"role": "system", "content": content}]
        if not all(isinstance(b, TextBlock) for b in content):
            raise InvalidRequest(f"`{where}.content`: a system message takes only text blocks.", param=where)
        return [_system_message([b for b in content if isinstance(b, TextBlock)], passthrough)]
    if isinstance(content, str):
        return [{"role": message.role, "content": content}]
    if message.role == "user":
        return _user_messages(content, where, passthrough)
    return [_assistant_message(content, where, passthrough)]


def _tools(request: MessagesRequest, raw: list[Any], passthrough: bool) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(request.tools or ()):
        if tool.type not in (None, "custom"):
            # One of Anthropic's own tools (web search, code execution, computer use, ...): only
            # Anthropic can run or describe it: dropped for other providers.
            if passthrough:
                tools.append(_anthropic_tool(raw[i]))
            continue
        if tool.input_schema is None:
            raise InvalidRequest(f"`tools[{i}].input_schema` is required.", param=f"tools[{i}].input_schema")
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        tools.append(_cached({"type": "function", "function": function}, tool, passthrough))
    return tools


def _anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """One of Anthropic's own tools for LiteLLM's Anthropic mapping, with every field the client set
    (``max_uses``, ``allowed_domains``, ``user_location``, ...): the mapping passes a hosted tool's
    fields on as they are, and reads a computer tool's display from OpenAI's function shape."""
    if str(tool.get("type")).startswith("computer_"):
        display = {k: tool[k] for k in ("display_width_px", "display_height_px", "display_number") if k in tool}
        return {"type": tool["type"], "function": {"name": tool.get("name", "computer"), "parameters": display}}
    return dict(tool)


def _tool_choice(request: MessagesRequest, body: dict[str, Any]) -> None:
    choice = request.tool_choice
    if choice is None:
        return
    if isinstance(choice, ToolChoiceNone):
        body["tool_choice"] = "none"
        return
    if isinstance(choice, ToolChoiceAuto):
        body["tool_choice"] = "auto"
    elif isinstance(choice, ToolChoiceAny):
        body["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceTool):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if choice.disable_parallel_tool_use and body.get("tools"):
        body["parallel_tool_calls"] = False


def reasoning_effort(request: MessagesRequest, raw: dict[str, Any]) -> str | None:
    """``thinking`` as an OpenAI reasoning effort: a budget's size, or ``output_config.effort`` for
    adaptive thinking (Claude Code's); None when thinking is off or not asked for."""
    thinking = request.thinking
    if thinking is None or thinking.type == "disabled":
        return None
    if thinking.type == "enabled" and thinking.budget_tokens is not None:
        budget = thinking.budget_tokens
        return "low" if budget <= _LOW_BUDGET else "medium" if budget <= _MEDIUM_BUDGET else "high"
    config = raw.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return effort if effort in ("low", "medium", "high") else "medium"


def to_chat_body(
    request: MessagesRequest, raw: dict[str, Any], *, passthrough: bool, stream: bool, reasoning: bool = False
) -> dict[str, Any]:
    """The chat completions body for this Messages request (``passthrough``: an Anthropic deployment;
    ``reasoning``: another provider's model that takes a reasoning effort)."""
    body: dict[str, Any] = {"model": request.model, "messages": _messages(request, passthrough)}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # message_delta's usage needs it
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    tools = _tools(request, raw.get("tools") or [], passthrough)
    if tools:
        body["tools"] = tools
        _tool_choice(request, body)
    elif isinstance(request.tool_choice, ToolChoiceNone):
        pass
    user = request.metadata.user_id if request.metadata is not None else None
    if user and len(user) <= _USER_MAX:
        body["user"] = user
    if reasoning and not passthrough:
        effort = reasoning_effort(request, raw)
        if effort is not None:
            body["reasoning_effort"] = effort
    if passthrough:
        if request.top_k is not None:
            body["top_k"] = request.top_k
        if "thinking" in raw and isinstance(raw["thinking"], dict):
            body["thinking"] = raw["thinking"]
        for name, value in raw.items():
            if name in ANTHROPIC_BODY_FIELDS and name not in body:
                body[name] = value
    return body


def native_request(raw: dict[str, Any], headers: Mapping[str, str]) -> NativeRequest:
    """The client's own Messages request, for an Anthropic deployment that is sent it as it came (the
    relay's): its body (validated by ``parse_messages_body``) minus what is never passed on, and its
    ``anthropic-version`` and ``anthropic-beta`` headers."""
    body = {name: value for name, value in raw.items() if name not in _NEVER}
    return NativeRequest(body=body, headers={name: headers[name] for name in NATIVE_HEADERS if name in headers})


def to_chat_input(
    body: dict[str, Any],
    trace_headers: dict[str, str] | None = None,
    anthropic: NativeRequest | None = None,
    portable: ChatCompletionInput | InvalidRequest | None = None,
    client_body: dict[str, Any] | None = None,
) -> ChatCompletionInput:
    """The translated body as the chat pipeline's request (it was built by us, from checked values);
    ``anthropic``: the request as it came, for an Anthropic deployment that takes it so;
    ``portable``: the translation without Anthropic's controls, for a fallback that is not Anthropic's;
    ``client_body``: the Messages body it translates, which errors name fields of."""
    try:
        chat = msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError as exc:  # a value valid for Anthropic but not for the chat shape
        param = _param_of(exc)
        raise InvalidRequest(
            f"Invalid request: {str(exc)[:300]}", code=param or "invalid_request", param=param
        ) from exc
    return ChatCompletionInput(
        request=chat,
        body=body,
        trace_headers=trace_headers,
        anthropic=anthropic,
        portable=portable,
        client_body=client_body,
    )
