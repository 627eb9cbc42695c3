"""Per deployment, the relay fast path, the built-in demo models or the full LiteLLM path, behind the
one Provider Protocol; and, for Messages API requests on Anthropic deployments, the relay in
Anthropic's own API (``anthropic_relay.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import msgspec

from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion
from app.domain.errors import InvalidRequest
from app.providers.base import Provider
from app.providers.content_urls import NO_URLS, UrlPolicy
from app.providers.demo import DemoProvider
from app.providers.relay import Relay

#: The W3C trace context headers a request's provider call carries.
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


class RoutingProvider:
    """``url_policies``: per deployment id, which content URLs its provider is given (the rest are
    refused before either path sees the request: ``content_urls.py``); unlisted: none."""

    def __init__(
        self,
        relay: Relay,
        full: Provider | None,
        url_policies: Mapping[str, UrlPolicy] | None = None,
        *,
        demo: DemoProvider | None = None,
        anthropic: Relay | None = None,
        anthropic_ids: frozenset[str] = frozenset(),
    ) -> None:
        """``full``: the LiteLLM path, None when every deployment takes the relay or is a demo model;
        ``anthropic``: the relay for the Anthropic deployments that take it with a Messages API request."""
        self._relay = relay
        self._anthropic = anthropic
        self._native = frozenset(anthropic.targets) if anthropic is not None else frozenset()
        self._full = full
        self._demo = demo
        self._fast = frozenset(relay.targets)
        self._url_policies = dict(url_policies or {})
        #: Every Anthropic deployment, on either path: the ones that take Anthropic's own controls.
        self._anthropic_ids = anthropic_ids | self._native

    def path_of(self, deployment: str, *, messages: bool = False) -> str:
        """Which path a request for ``deployment`` takes (``messages``: a Messages API request on a
        model whose deployments are all Anthropic ones)."""
        return "fast" if deployment in self._fast or (messages and deployment in self._native) else "full"

    def _native_path(self, request: ChatCompletionInput, deployment: str) -> Relay | None:
        if request.anthropic is not None and deployment in self._native:
            return self._anthropic
        return None

    def _check_urls(self, request: ChatCompletionInput, deployment: str) -> None:
        if request.has_parts:
            self._url_policies.get(deployment, NO_URLS).check(request.body["messages"], request.client_body)

    def _for(self, request: ChatCompletionInput, deployment: str) -> ChatCompletionInput:
        # A Messages request on an Anthropic model carries Anthropic's controls (thinking, cache
        # marks, context_management, ...); a fallback to another provider gets it without them,
        # which that provider would refuse.
        portable = request.portable
        if portable is None or deployment in self._anthropic_ids:
            return request
        if isinstance(portable, InvalidRequest):
            raise portable
        # The trace context only: the rest of the original's headers are Anthropic's (anthropic-beta).
        trace = {k: v for k, v in (request.trace_headers or {}).items() if k in _TRACE_HEADERS}
        return msgspec.structs.replace(portable, trace_headers=trace or None)

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        request = self._for(request, deployment)
        self._check_urls(request, deployment)
        if deployment in self._fast:
            return await self._relay.complete(request, deployment)
        if (native := self._native_path(request, deployment)) is not None:
            return await native.complete(request, deployment)
        if self._demo is not None and self._demo.serves(deployment):
            return await self._demo.complete(request, deployment)
        return await self._full_path().complete(request, deployment)

    def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        request = self._for(request, deployment)
        self._check_urls(request, deployment)
        if deployment in self._fast:
            return self._relay.stream(request, deployment)
        if (native := self._native_path(request, deployment)) is not None:
            return native.stream(request, deployment)
        if self._demo is not None and self._demo.serves(deployment):
            return self._demo.stream(request, deployment)
        return self._full_path().stream(request, deployment)

    def _full_path(self) -> Provider:
        if self._full is None:  # every configured deployment has a relay target
            raise LookupError("no deployment takes the full LiteLLM path")
        return self._full

    async def aclose(self) -> None:
        await self._relay.aclose()
        if self._anthropic is not None:
            await self._anthropic.aclose()
        if self._full is not None:
            await self._full.aclose()
