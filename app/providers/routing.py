"""Per deployment, the relay fast path or the full LiteLLM path, behind the one Provider Protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion
from app.providers.base import Provider
from app.providers.relay import Relay


class RoutingProvider:
    def __init__(self, relay: Relay, full: Provider | None) -> None:
        """``full``: the LiteLLM path, None when every deployment takes the relay."""
        self._relay = relay
        self._full = full
        self._fast = frozenset(relay.targets)

    def path_of(self, deployment: str) -> str:
        return "fast" if deployment in self._fast else "full"

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        if deployment in self._fast:
            return await self._relay.complete(request, deployment)
        return await self._full_path().complete(request, deployment)

    def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        if deployment in self._fast:
            return self._relay.stream(request, deployment)
        return self._full_path().stream(request, deployment)

    def _full_path(self) -> Provider:
        if self._full is None:  # every configured deployment has a relay target
            raise LookupError("no deployment takes the full LiteLLM path")
        return self._full

    async def aclose(self) -> None:
        await self._relay.aclose()
        if self._full is not None:
            await self._full.aclose()
