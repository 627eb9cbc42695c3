"""The relay fast path, for deployments whose provider speaks the OpenAI wire format.

LiteLLM still resolves the deployment (URL, credentials, headers, request parameter mapping) once
at start-up and per request; the stream itself is relayed event by event: the upstream SSE is split
into events, each decoded by msgspec only as far as the gateway needs (content present? finish?
usage? error?), and the provider's JSON bytes are handed on untouched for SSE and WebSocket framing.

The HTTP client is the relay's own (``providers.upstream``): HTTP/1.1 keep-alive, one pool per upstream
origin, a request written in one piece; see that module for why not aiohttp or httpx.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from yarl import URL

from app.errors import GatewayError, ProviderRejected, UpstreamTimeout, UpstreamUnavailable
from app.protocol.openai import ChatCompletionInput
from app.providers.base import Chunk, Completion, asking_for_usage
from app.providers.chunks import completion_usage, error_from_reply, read_chunk
from app.providers.egress import EgressSettings
from app.providers.litellm_setup import import_litellm
from app.providers.quoting import ProviderText
from app.providers.upstream import RequestTemplate, UpstreamConnectionError, UpstreamPool, UpstreamResponse
from app.settings import DeploymentSettings

litellm = import_litellm()

_OWN_FIELDS = frozenset({"model", "messages"})
_encode = msgspec.json.encode


# -- deciding and resolving -------------------------------------------------------------------


@dataclass(frozen=True)
class RelayTarget:
    """What LiteLLM resolved for one deployment, once."""

    url: URL
    origin: str  # scheme://host:port: one connection pool each
    request: RequestTemplate  # the POST, prepared but for its body
    headers: dict[str, str]  # its headers, for a request that adds its own (trace context)
    model: str
    config: Any  # LiteLLM's provider chat config: maps request parameters per request
    supported: frozenset[str]
    timeout_s: float
    #: What LiteLLM's own call path hands the config's transform_request (provider-specific rules,
    #: e.g. whether prompt-cache marks survive, depend on the provider and the endpoint).
    litellm_params: dict[str, Any]


def resolve_target(dep: DeploymentSettings, environ: Mapping[str, str]) -> RelayTarget | None:
    """A RelayTarget when the fast path applies to ``dep``, else None (it keeps the full LiteLLM path).

    Applies when the deployment allows it, LiteLLM's chat config for the provider is an OpenAI-wire
    config (``OpenAIGPTConfig``) and a base URL is known. Retries, cooldowns and fallbacks do not
    matter here: they sit in front of both paths (``providers/resilient.py``).
    """
    if not dep.fast_path:
        return None
    from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig
    from litellm.utils import ProviderConfigManager

    try:
        model, provider, _key, default_base = litellm.get_llm_provider(dep.litellm_model, api_base=dep.api_base or None)
        config = ProviderConfigManager.get_provider_chat_config(model=model, provider=litellm.LlmProviders(provider))
    except Exception:
        return None
    if not isinstance(config, OpenAIGPTConfig):
        return None
    base = dep.api_base or default_base or ("https://api.openai.com/v1" if provider == "openai" else None)
    if not base:
        return None
    api_key = environ.get(dep.api_key_env, "") if dep.api_key_env else "no-key"
    headers = config.validate_environment(
        headers={}, model=model, messages=[], optional_params={}, litellm_params={}, api_key=api_key, api_base=base
    )
    url = config.get_complete_url(
        api_base=base, api_key=api_key, model=model, optional_params={}, litellm_params={}, stream=True
    )
    headers = {**headers, "Accept-Encoding": "identity"}  # a compressed stream would buffer upstream
    supported = frozenset(config.get_supported_openai_params(model))
    parsed = URL(url)
    return RelayTarget(
        url=parsed,
        origin=str(parsed.origin()),
        request=RequestTemplate(parsed, headers),
        headers=headers,
        model=model,
        config=config,
        supported=supported,
        timeout_s=dep.timeout_s,
        litellm_params={"custom_llm_provider": provider, "api_base": base},
    )


def request_body(target: RelayTarget, request: ChatCompletionInput, *, stream: bool) -> bytes:
    params = {k: v for k, v in request.body.items() if k not in _OWN_FIELDS}
    params["stream"] = stream
    if stream:
        params["stream_options"] = asking_for_usage(params.get("stream_options"))
    else:
        params.pop("stream_options", None)
    known = {k: v for k, v in params.items() if k in target.supported}
    try:
        optional = target.config.map_openai_params(
            non_default_params=known, optional_params={}, model=target.model, drop_params=False
        )
        body = target.config.transform_request(
            target.model, request.body["messages"], optional, dict(target.litellm_params), {}
        )
    except Exception as exc:  # LiteLLM refuses parameters the provider cannot take
        raise ProviderRejected(
            str(getattr(exc, "message", exc)).split("\n", 1)[0], code="unsupported_parameter"
        ) from exc
    # Fields LiteLLM does not know pass through to the provider untouched.
    for key, value in params.items():
        if key not in target.supported and key not in body:
            body[key] = value
    body["stream"] = stream
    return _encode(body)


# -- the relay --------------------------------------------------------------------------------


class Relay:
    """Streams and completes through one keep-alive connection pool per upstream origin."""

    #: Connections per upstream origin. One open stream holds one connection, so this bounds how many
    #: streams a worker relays at once per origin; streams beyond it wait (with heartbeats) for a slot.
    POOL_SIZE = 10_000

    def __init__(
        self,
        targets: dict[str, RelayTarget],
        *,
        pool_size: int = POOL_SIZE,
        quote: ProviderText | None = None,
        egress: EgressSettings | None = None,
    ) -> None:
        self.targets = targets
        self._egress = egress
        self._quote = quote or ProviderText()
        self._pool_size = pool_size
        self._pools: dict[str, UpstreamPool] = {}

    def _pool(self, target: RelayTarget) -> UpstreamPool:
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = UpstreamPool(target.url, limit=self._pool_size, egress=self._egress)
            self._pools[target.origin] = pool
        return pool

    def open_pools(self) -> None:
        for target in self.targets.values():
            self._pool(target)

    async def _post(self, target: RelayTarget, body: bytes, request: ChatCompletionInput) -> UpstreamResponse:
        template = target.request
        if request.trace_headers:
            # A traced request carries its W3C context: a template of its own (only when tracing is on).
            template = RequestTemplate(target.url, {**target.headers, **request.trace_headers})
        try:
            response = await self._pool(target).post(template, body)
        except TimeoutError as exc:  # connecting took longer than the pool's connect timeout
            raise UpstreamTimeout("The provider could not be reached in time.") from exc
        except (UpstreamConnectionError, OSError) as exc:
            raise UpstreamUnavailable(f"The provider could not be reached: {type(exc).__name__}") from exc
        if response.status != 200:
            try:
                error_body = await response.read(limit=65_536)
            except (UpstreamConnectionError, OSError):
                error_body = b""
            finally:
                response.release()
            raise self._quote.quote(error_from_reply(response.status, error_body, response.headers))
        return response

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        target = self.targets[deployment]
        response = await self._post(target, request_body(target, request, stream=False), request)
        try:
            raw = await response.read()
        except (UpstreamConnectionError, OSError) as exc:
            response.close()
            raise UpstreamUnavailable("The provider's answer broke off.") from exc
        except BaseException:  # cancelled (the call's deadline, the client leaving): drop the connection
            response.close()
            raise
        response.release()
        try:
            usage = completion_usage(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamUnavailable("The provider's answer was not valid JSON.") from exc
        return Completion(raw=raw, usage=usage)

    def stream(self, request: ChatCompletionInput, deployment: str) -> RelayStream:
        return RelayStream(self, request, deployment)

    async def _events(
        self, out: RelayStream, request: ChatCompletionInput, deployment: str
    ) -> AsyncGenerator[Chunk, None]:
        target = self.targets[deployment]
        response = await self._post(target, request_body(target, request, stream=True), request)
        finished = False
        try:
            buffer = b""
            while data := await response.read_some():
                buffer += data.replace(b"\r\n", b"\n") if b"\r" in data else data
                # Every complete event of this read first, so that the stream's writer can be told
                # which chunk has another one right behind it (``out.more``): those go out together.
                items: list[Chunk | GatewayError | None] = []  # None: [DONE]
                while (end := buffer.find(b"\n\n")) >= 0:
                    payload = _data_of(buffer[:end])
                    buffer = buffer[end + 2 :]
                    if payload is not None:
                        items.append(self._item(payload))
                for item, more in zip(items, _followed(items), strict=True):
                    if item is None:
                        finished = True
                        return
                    if isinstance(item, GatewayError):
                        raise item
                    out.more = more
                    yield item
                out.more = False
            # The body ended without [DONE]: the provider broke off.
            raise UpstreamUnavailable("The provider's stream broke off before it finished.")
        except (UpstreamConnectionError, OSError) as exc:
            raise UpstreamUnavailable(f"The provider's stream broke off: {type(exc).__name__}") from exc
        finally:
            if finished:
                response.release()  # back to the pool when the body has ended, else closed
            else:
                response.close()  # closes the socket at once: the provider sees the client leave

    def _item(self, payload: bytes) -> Chunk | GatewayError | None:
        """One event's data: a chunk, the error it stands for, or None for ``[DONE]``."""
        if payload == b"[DONE]":
            return None
        try:
            return read_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = UpstreamUnavailable("The provider sent an unreadable chunk.")
            error.__cause__ = exc
            return error
        except GatewayError as exc:  # the provider reported an error in the stream
            return self._quote.quote(exc)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


class RelayStream:
    """One relayed stream's chunks. ``more`` is true while the next chunk (or the end) has already
    arrived with this one: pulling it will not wait, so a writer may hold this one and write both
    together (chunks that arrive together are written together)."""

    __slots__ = ("_events", "more")

    def __init__(self, relay: Relay, request: ChatCompletionInput, deployment: str) -> None:
        self.more = False
        self._events = relay._events(self, request, deployment)

    def __aiter__(self) -> RelayStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        return self._events.__anext__()

    def aclose(self) -> Awaitable[None]:
        return self._events.aclose()


def _followed(items: list[Chunk | GatewayError | None]) -> list[bool]:
    """For each item, whether one that is surely handed on comes after it in the same read.

    A usage-only chunk does not count: the stream drops it for a client that did not ask for usage,
    and a chunk held for it would then wait for the provider's next read.
    """
    followed, firm = [False] * len(items), False
    for i in range(len(items) - 1, -1, -1):
        followed[i] = firm
        item = items[i]
        firm = firm or not (isinstance(item, Chunk) and item.usage_only)
    return followed


def _data_of(event: bytes) -> bytes | None:
    """The data of one SSE event (CRLF tolerated); comments and other fields are ignored."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:].rstrip(b"\r")  # the common case: one data line
    lines = [line.rstrip(b"\r") for line in event.split(b"\n")]
    data = [line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in lines]
    parts = [d for d in data if d is not None]
    return b"\n".join(parts) if parts else None
