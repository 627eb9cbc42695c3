"""OpenAI Responses API request wire model (docs/responses.md): the create body's top-level fields, typed.

Only type and range are checked here; the items, tools and formats inside are walked by
``request.py``, which names the exact path of whatever is wrong
(``input[2].content[0].image_url``). The body is decoded with the same bounded decoder as chat
completions (``decode_json``), so depth and size are bounded before any of this runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

MetadataKey = Annotated[str, msgspec.Meta(max_length=64)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=512)]


class ResponsesCreate(msgspec.Struct):
    """OpenAI's Responses create body, as far as the gateway reads it."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: str | list[Any] | None = None
    instructions: str | None = None
    stream: bool | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    store: bool | None = None
    background: bool | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=16)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    include: list[str] | None = None
    prompt_cache_key: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    safety_identifier: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    # Read and dropped (no chat-completions equivalent, or the gateway's own business).
    client_metadata: dict[str, Any] | None = None
    truncation: str | None = None
    service_tier: str | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    max_tool_calls: Annotated[int, msgspec.Meta(gt=0)] | None = None
    stream_options: dict[str, Any] | None = None
    # Refused: features of OpenAI's own servers the gateway does not have.
    conversation: Any = None
    prompt: Any = None


#: Fields a create body may carry; anything else is dropped (never sent to a provider).
CREATE_FIELDS: Final = frozenset(ResponsesCreate.__struct_fields__)
#: Known fields that need OpenAI's own servers: a request that sets one is refused, naming it.
REFUSED_FIELDS: Final = ("conversation", "prompt")
#: The one WebSocket frame type a client sends (docs/responses.md, WebSocket mode).
CREATE_FRAME: Final = "response.create"
