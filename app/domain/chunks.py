"""The domain's values that every layer shares: a chunk of a chat stream, its usage, a whole
completion, and what one event of a pushed stream stands for."""

from __future__ import annotations

from typing import Any

import msgspec

from app.domain.errors import GatewayError


class Usage(msgspec.Struct, frozen=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Web searches the provider ran for the call (Anthropic's ``server_tool_use``), each priced apart.
    web_searches: int = 0


class Chunk(msgspec.Struct, frozen=True, gc=False):
    """One ``chat.completion.chunk``: its JSON bytes, ready to frame, plus what the gateway reads of it.

    ``gc=False``: never tracked by the garbage collector (it holds bytes, strings and a ``Usage``, so it
    can be part of no cycle), which matters for the millions a resume store keeps (``StreamEvent``).

    Keeping the encoded bytes lets SSE and WebSocket framers (and the relay fast path) forward
    the provider's chunk without decoding and re-encoding it.
    """

    raw: bytes
    has_content: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    #: A chunk with no choices that only carries usage (the `include_usage` chunk).
    usage_only: bool = False
    #: Output tokens this chunk carries, as estimated from its text (``estimate_text_tokens``): what
    #: a call is charged when the provider's usage never arrives.
    tokens: int = 0


def estimate_text_tokens(text: str) -> int:
    """Tokens in ``text``, erring high: four ASCII characters a token, one per other character
    (CJK and most non-Latin scripts run about a token a character)."""
    if not text:
        return 0
    return (len(text) + 3) // 4 if text.isascii() else len(text)


class Completion(msgspec.Struct, frozen=True):
    """A whole ``chat.completion`` object, already encoded."""

    raw: bytes
    usage: Usage | None = None


#: What one event of a provider's stream stands for, when handed on in push mode: a chunk, the
#: error it reports (or that reading it became), or None for the stream's clean end.
Item = Chunk | GatewayError | None


def reaches_client(chunk: Chunk, include_usage: bool) -> bool:
    """Whether the client gets ``chunk``: every chunk does, the usage-only one only if the client
    asked for usage (``stream_options.include_usage``). The gateway always asks the provider for
    usage, for its token counts; the stream applies this rule, and the relay knows by it which
    chunks of a read surely go out (those may be written together)."""
    return include_usage or not chunk.usage_only


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        web_searches=web_searches_of(data.get("server_tool_use")),
    )


#: The most web searches one call's usage is believed to report: a count beyond it (a provider's
#: garbage) is read as this, never as a number too large to price.
MAX_WEB_SEARCHES = 10_000


def web_searches_of(server_tool_use: Any) -> int:
    """The web searches a usage's ``server_tool_use`` reports; 0 for anything else (a provider's
    field in a shape of its own must not fail the stream whose usage carries it)."""
    if isinstance(server_tool_use, dict):
        count = server_tool_use.get("web_search_requests")
        if type(count) is int and count > 0:
            return min(count, MAX_WEB_SEARCHES)
    return 0
