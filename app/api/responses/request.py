"""A Responses create body -> the gateway's chat-completions request (docs/responses.md).

Everything here is a pure function of the client's JSON: items become chat messages, function and
namespace tools become chat tools, ``text.format`` a ``response_format``, ``reasoning.effort`` a
``reasoning_effort``. What has no chat-completions equivalent is dropped (``client_metadata``,
``include`` entries, built-in tools that are merely offered) or refused with a 400 that names the
field's path (``input[2].content[0].image_url``). The result is validated again as a chat body
(``validate_chat_body``), so the chat pipeline sees exactly what a chat client could have sent.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from app.api.responses.wire import CREATE_FIELDS, REFUSED_FIELDS, ResponsesCreate
from app.domain.chat_request import ChatCompletionInput, _param_of, decode_json, provider_control, validate_chat_body
from app.domain.errors import InvalidRequest

#: Tools that OpenAI runs on its own servers: no provider behind a chat completion can run them.
BUILTIN_TOOLS: Final = frozenset(
    {
        "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
        "file_search", "computer_use", "computer_use_preview", "computer", "code_interpreter", "mcp",
        "image_generation", "local_shell", "shell", "apply_patch", "custom", "tool_search",
    }
)  # fmt: skip
#: Item types from earlier outputs that carry nothing a chat provider could take back.
DROPPED_ITEMS: Final = frozenset({"reasoning", "web_search_call", "file_search_call", "image_generation_call"})
REASONING_EFFORTS: Final = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
ROLES: Final = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
MAX_ITEMS: Final = 10_000


def bad(message: str, param: str) -> InvalidRequest:
    """A field that fails validation: code and param are its path, as for a chat body."""
    return InvalidRequest(message, code=param[:256], param=param[:256])


def unsupported(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, code="unsupported_parameter", param=param[:256])


def _str(value: Any, param: str, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise bad(f"`{param}` must be a string.", param)
    return value


def _obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"`{param}` must be an object.", param)
    return value


def parse_create(raw: bytes | str) -> tuple[ResponsesCreate, dict[str, Any]]:
    """The body decoded (bounded), its top-level fields typed; provider-layer controls refused."""
    return validate_create(decode_json(raw))


def validate_create(body: Any) -> tuple[ResponsesCreate, dict[str, Any]]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"The body must be a JSON object, got {type(body).__name__}.")
    for name in body:
        if provider_control(name) and name not in CREATE_FIELDS:
            raise unsupported(
                f"`{name[:64]}` is a setting of the gateway's provider layer and cannot be set by a request.", name
            )
    for name in REFUSED_FIELDS:
        if body.get(name) is not None:
            raise unsupported(f"`{name}` is not supported by this gateway.", name)
    try:
        create = msgspec.convert({k: v for k, v in body.items() if k in CREATE_FIELDS}, ResponsesCreate)
    except msgspec.ValidationError as exc:
        param = _param_of(exc)
        param = param[:128] if param else None
        raise InvalidRequest(
            f"Invalid request: {str(exc)[:300]}", code=param or "invalid_request", param=param
        ) from exc
    return create, body


# -- input items -----------------------------------------------------------------------------------


def input_items(value: str | list[Any] | None) -> list[dict[str, Any]]:
    """The request's own input as items (a string is one user message), each checked."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if len(value) > MAX_ITEMS:
        raise bad(f"`input` holds more than {MAX_ITEMS} items.", "input")
    items: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        path = f"input[{i}]"
        item = _obj(item, path)
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            items.append(_check_message(item, path))
        elif kind == "function_call":
            for field in ("call_id", "name", "arguments"):
                _str(item.get(field), f"{path}.{field}")
            if item.get("namespace") is not None:
                _str(item["namespace"], f"{path}.namespace")
            items.append(item)
        elif kind == "function_call_output":
            _str(item.get("call_id"), f"{path}.call_id")
            output = item.get("output")
            if isinstance(output, list):
                for j, part in enumerate(output):
                    _content_part(part, f"{path}.output[{j}]", "user")
            else:
                _str(output, f"{path}.output")
            items.append(item)
        elif isinstance(kind, str) and kind in DROPPED_ITEMS:
            items.append(item)
        elif isinstance(kind, str):
            raise unsupported(f"Input items of type `{kind[:64]}` are not supported by this gateway.", f"{path}.type")
        else:
            raise bad(f"`{path}.type` must be a string.", f"{path}.type")
    return items


def _check_message(item: dict[str, Any], path: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad(f"`{path}.role` must be one of user, assistant, system, developer.", f"{path}.role")
    content = item.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            _content_part(part, f"{path}.content[{j}]", role)
    else:
        _str(content, f"{path}.content")
    return item


def _content_part(part: Any, path: str, role: str) -> dict[str, Any]:
    """One content part as a chat content part (checked)."""
    part = _obj(part, path)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _str(part.get("text"), f"{path}.text")}
    if kind == "refusal":
        return {"type": "text", "text": _str(part.get("refusal"), f"{path}.refusal")}
    if role == "assistant":
        raise bad(f"`{path}.type` must be output_text or refusal in an assistant message.", f"{path}.type")
    if kind == "input_image":
        detail = part.get("detail")
        if detail is not None and detail not in ("auto", "low", "high", "original"):
            raise bad(f"`{path}.detail` must be auto, low or high.", f"{path}.detail")
        if part.get("image_url") is None:
            if part.get("file_id") is not None:
                raise InvalidRequest(
                    "Images by file id need OpenAI's file storage; send the image as a URL or a data URL.",
                    code="unsupported_content",
                    param=f"{path}.file_id",
                )
            raise bad(f"`{path}.image_url` is required.", f"{path}.image_url")
        url = _str(part.get("image_url"), f"{path}.image_url")
        if not url.startswith(("http://", "https://", "data:")):
            raise bad(f"`{path}.image_url` must be an http(s) URL or a data URL.", f"{path}.image_url")
        image: dict[str, Any] = {"url": url}
        if detail in ("low", "high", "auto"):
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file: dict[str, Any] = {}
        if part.get("file_url") is not None:
            raise InvalidRequest(
                "Files by URL cannot be given to a chat provider; send the file's data.",
                code="unsupported_content",
                param=f"{path}.file_url",
            )
        if part.get("file_data") is not None:
            file["file_data"] = _str(part["file_data"], f"{path}.file_data")
        if part.get("file_id") is not None:
            file["file_id"] = _str(part["file_id"], f"{path}.file_id")
        if part.get("filename") is not None:
            file["filename"] = _str(part["filename"], f"{path}.filename")
        if "file_data" not in file and "file_id" not in file:
            raise bad(f"`{path}` needs file_data or file_id.", f"{path}.file_data")
        return {"type": "file", "file": file}
    if kind == "input_audio":
        audio = _obj(part.get("input_audio"), f"{path}.input_audio")
        return {
            "type": "input_audio",
            "input_audio": {
                "data": _str(audio.get("data"), f"{path}.input_audio.data"),
                "format": _str(audio.get("format"), f"{path}.input_audio.format"),
            },
        }
    if isinstance(kind, str):
        raise bad(f"Content parts of type `{kind[:64]}` are not supported.", f"{path}.type")
    raise bad(f"`{path}.type` must be a string.", f"{path}.type")


def to_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items (already checked) -> chat messages: consecutive function calls, and an assistant
    message right before them, become one assistant message with ``tool_calls``."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):  # as the check above reads it
            role = ROLES[item["role"]]
            content = item["content"]
            if isinstance(content, list):
                parts = [_content_part(p, "input", item["role"]) for p in content]
                if role != "user" or all(p["type"] == "text" for p in parts):
                    content = "".join(p["text"] for p in parts if p["type"] == "text")
                else:
                    content = parts
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            if isinstance(output, list):
                output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    return messages


# -- tools and settings ----------------------------------------------------------------------------


class Tools(msgspec.Struct):
    chat: list[dict[str, Any]]
    #: Built-in tools left out of the call (X-Gateway-Omitted-Tools).
    omitted: list[str]
    #: A namespace member's function name -> its namespace (for the function calls the model makes).
    namespaces: dict[str, str]
    #: The tools as the response object echoes them (function and namespace tools only).
    echo: list[dict[str, Any]]


def _function_tool(tool: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    name = _str(tool.get("name"), f"{path}.name")
    if not 1 <= len(name) <= 128:
        raise bad(f"`{path}.name` must be 1 to 128 characters.", f"{path}.name")
    function: dict[str, Any] = {"name": name}
    echo: dict[str, Any] = {"type": "function", "name": name}
    if tool.get("description") is not None:
        function["description"] = echo["description"] = _str(tool["description"], f"{path}.description")
    parameters = tool.get("parameters")
    if parameters is not None:
        function["parameters"] = echo["parameters"] = _obj(parameters, f"{path}.parameters")
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise bad(f"`{path}.strict` must be a boolean.", f"{path}.strict")
        function["strict"] = strict
    echo["strict"] = bool(strict)
    return {"type": "function", "function": function}, echo


def translate_tools(tools: list[Any] | None) -> Tools:
    result = Tools(chat=[], omitted=[], namespaces={}, echo=[])
    seen: set[str] = set()
    for i, tool in enumerate(tools or []):
        path = f"tools[{i}]"
        tool = _obj(tool, path)
        kind = tool.get("type")
        if kind == "function":
            chat, echo = _function_tool(tool, path)
            if chat["function"]["name"] not in seen:
                seen.add(chat["function"]["name"])
                result.chat.append(chat)
            result.echo.append(echo)
        elif kind == "namespace":
            namespace = _str(tool.get("name"), f"{path}.name")
            members = tool.get("tools")
            if not isinstance(members, list):
                raise bad(f"`{path}.tools` must be an array.", f"{path}.tools")
            echoed: list[dict[str, Any]] = []
            for j, member in enumerate(members):
                member_path = f"{path}.tools[{j}]"
                member = _obj(member, member_path)
                if member.get("type") != "function":
                    raise unsupported(f"`{member_path}.type` must be function.", f"{member_path}.type")
                chat, echo = _function_tool(member, member_path)
                name = chat["function"]["name"]
                echoed.append(echo)
                if name not in seen:
                    seen.add(name)
                    result.chat.append(chat)
                    result.namespaces[name] = namespace
            description = tool.get("description")
            result.echo.append(
                {
                    "type": "namespace",
                    "name": namespace,
                    "description": description if isinstance(description, str) else "",
                    "tools": echoed,
                }
            )
        elif isinstance(kind, str) and kind in BUILTIN_TOOLS:
            result.omitted.append(kind)
        elif isinstance(kind, str):
            raise unsupported(f"Tools of type `{kind[:64]}` are not supported by this gateway.", f"{path}.type")
        else:
            raise bad(f"`{path}.type` must be a string.", f"{path}.type")
    return result


def translate_tool_choice(choice: str | dict[str, Any] | None, tools: Tools) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise bad("`tool_choice` must be auto, none, required or an object.", "tool_choice")
        if choice == "required" and not tools.chat and tools.omitted:
            raise unsupported(
                f"`tool_choice` requires a tool, and the only tools offered ({', '.join(tools.omitted)}) "
                "are built-in tools this gateway cannot run.",
                "tool_choice",
            )
        return choice if tools.chat else None
    kind = choice.get("type")
    if kind == "function":
        name = _str(choice.get("name"), "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise bad("`tool_choice.mode` must be auto or required.", "tool_choice.mode")
        return str(mode) if tools.chat else None
    if isinstance(kind, str) and (kind in BUILTIN_TOOLS or kind.startswith(("web_search", "computer", "file_search"))):
        raise unsupported(
            f"`tool_choice` requires the built-in tool `{kind[:64]}`, which this gateway cannot run.", "tool_choice"
        )
    raise bad("`tool_choice.type` must be function or allowed_tools.", "tool_choice.type")


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    if not text:
        return None
    fmt = text.get("format")
    if fmt is None:
        return None
    fmt = _obj(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema: dict[str, Any] = {
            "name": _str(fmt.get("name"), "text.format.name"),
            "schema": _obj(fmt.get("schema"), "text.format.schema"),
        }
        if fmt.get("strict") is not None:
            if not isinstance(fmt["strict"], bool):
                raise bad("`text.format.strict` must be a boolean.", "text.format.strict")
            schema["strict"] = fmt["strict"]
        if fmt.get("description") is not None:
            schema["description"] = _str(fmt["description"], "text.format.description")
        return {"type": "json_schema", "json_schema": schema}
    raise bad("`text.format.type` must be text, json_object or json_schema.", "text.format.type")


def reasoning_effort(reasoning: dict[str, Any] | None) -> str | None:
    if not reasoning or reasoning.get("effort") is None:
        return None
    effort = reasoning["effort"]
    if not isinstance(effort, str) or effort not in REASONING_EFFORTS:
        raise bad(f"`reasoning.effort` must be one of {', '.join(sorted(REASONING_EFFORTS))}.", "reasoning.effort")
    return str(effort)


def chat_request(
    create: ResponsesCreate, messages: list[dict[str, Any]], tools: Tools, tool_choice: Any, fmt: Any, effort: Any
) -> ChatCompletionInput:
    """The chat-completions request the pipeline runs (always streamed upstream by the caller's choice)."""
    if not messages:
        raise bad("`input` is empty: a response needs at least one input item.", "input")
    # Usage always: a response reports it (the provider layer asks for it upstream whatever this says).
    body: dict[str, Any] = {"model": create.model, "messages": messages, "stream_options": {"include_usage": True}}
    if tools.chat:
        body["tools"] = tools.chat
        if create.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = create.parallel_tool_calls
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    optional = {
        "temperature": create.temperature,
        "top_p": create.top_p,
        "max_tokens": create.max_output_tokens,
        "user": create.user,
        "prompt_cache_key": create.prompt_cache_key,
        "safety_identifier": create.safety_identifier,
        "response_format": fmt,
        "reasoning_effort": effort,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    verbosity = (create.text or {}).get("verbosity")
    if verbosity in ("low", "medium", "high"):
        body["verbosity"] = verbosity
    try:
        chat = validate_chat_body(body)
    except InvalidRequest as exc:
        # A field that passed the checks above but not chat validation (a message shape): still a 400.
        raise InvalidRequest(exc.message, code=exc.code, param="input") from exc
    # Errors about the messages name the client's input items, not the translation's messages.
    return msgspec.structs.replace(chat, client_body={"input": create.input})
