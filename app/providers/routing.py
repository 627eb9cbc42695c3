"""Per deployment, the relay fast path or the full LiteLLM path, behind the one Provider Protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion
from app.providers.base import Provider
from app.providers.relay import Relay


class RoutingProvider:
    def __init__(self, relay: Relay, full: Provider) -> None:
        self._relay = relay
        self._full = full
        self._fast = frozenset(relay.targets)

    def path_of(self, deployment: str) -> str:
        return "fast" if deployment in self._fast else "full"

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        if deployment in self._fast:
            return await self._relay.complete(request, deployment)
        return await self._full.complete(request, deployment)

    def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        if deployment in self._fast:
            return self._relay.stream(request, deployment)
        return self._full.stream(request, deployment)

    async def aclose(self) -> None:
        await self._relay.aclose()
        await self._full.aclose()
