"""Which SSE framing a stream's log replays in: the one of the API that created the stream."""

from __future__ import annotations

from typing import Final

from app.api.chat.sse import CHAT_FRAMING, SseFraming
from app.api.messages.framing import ANTHROPIC_FRAMING

CHAT: Final = "chat"
ANTHROPIC: Final = "anthropic"

_FRAMINGS: Final[dict[str, SseFraming]] = {CHAT: CHAT_FRAMING, ANTHROPIC: ANTHROPIC_FRAMING}


def framing_for(name: str | None) -> SseFraming:
    return _FRAMINGS.get(name or CHAT, CHAT_FRAMING)
