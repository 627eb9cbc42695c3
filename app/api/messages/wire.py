"""Anthropic Messages API wire types (request side), validated with msgspec.

Only type and shape are checked here: what a given model supports is the provider's to say. Every
block is a tagged struct, so a malformed one is a 400 whose ``param`` names it
(``messages[2].content[0].type``). Fields Anthropic adds that the gateway does not read (``citations``,
``cache_control`` on blocks it passes on) are either kept as plain values or ignored; Anthropic-only
controls on the request itself (``context_management``, ``output_config``, ...) are read from the
body dict by the translation (``request.py``), not typed here, so new ones never break a
client.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
CacheControl = dict[str, Any] | None


class Base64Source(msgspec.Struct, tag_field="type", tag="base64"):
    media_type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    data: str


class UrlSource(msgspec.Struct, tag_field="type", tag="url"):
    url: Annotated[str, msgspec.Meta(min_length=1)]


class TextSource(msgspec.Struct, tag_field="type", tag="text"):
    media_type: str = "text/plain"
    data: str = ""


ImageSource = Base64Source | UrlSource
DocumentSource = Base64Source | UrlSource | TextSource


class TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str
    cache_control: CacheControl = None


class ImageBlock(msgspec.Struct, tag_field="type", tag="image"):
    source: ImageSource
    cache_control: CacheControl = None


class DocumentBlock(msgspec.Struct, tag_field="type", tag="document"):
    source: DocumentSource
    title: str | None = None
    cache_control: CacheControl = None


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    name: Name
    input: dict[str, Any]
    cache_control: CacheControl = None


ToolResultPart = TextBlock | ImageBlock | DocumentBlock


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result"):
    tool_use_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    content: str | list[ToolResultPart] = ""
    is_error: bool | None = None
    cache_control: CacheControl = None


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str | None = None
    cache_control: CacheControl = None


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str


Block = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class InputMessage(msgspec.Struct):
    # "system": Claude Code sends mid-conversation system messages (a beta of Anthropic's).
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class Tool(msgspec.Struct):
    name: Name
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    #: None or "custom": a function tool; anything else is one of Anthropic's server or client tools.
    type: str | None = None
    cache_control: CacheControl = None


class ToolChoiceAuto(msgspec.Struct, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(msgspec.Struct, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(msgspec.Struct, tag_field="type", tag="tool"):
    name: Name
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(msgspec.Struct, tag_field="type", tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class Thinking(msgspec.Struct):
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    budget_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Metadata(msgspec.Struct):
    user_id: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


class MessagesRequest(msgspec.Struct):
    """A Messages create body; ``max_tokens`` is required by the create route, not by count_tokens."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[InputMessage], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    metadata: Metadata | None = None
