"""The relay fast path, for deployments whose provider speaks the OpenAI wire format.

LiteLLM still resolves the deployment (URL, credentials, headers, request parameter mapping) once
at start-up and per request; the stream itself is relayed event by event: the upstream SSE is split
into events, each decoded by msgspec only as far as the gateway needs (content present? finish?
usage? error?), and the provider's JSON bytes are handed on untouched for SSE and WebSocket framing.

aiohttp's client, not httpx: per relayed chunk it costs a fraction of httpx's CPU, which is the
point of this path. HTTP/1.1 keep-alive, one pooled session per upstream host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from app.errors import ProviderRejected, UpstreamTimeout, UpstreamUnavailable
from app.protocol.openai import ChatCompletionInput
from app.providers.base import Chunk, Completion, asking_for_usage
from app.providers.chunks import completion_usage, error_from_reply, read_chunk
from app.providers.litellm_setup import import_litellm
from app.settings import DeploymentSettings

litellm = import_litellm()

_OWN_FIELDS = frozenset({"model", "messages"})
_encode = msgspec.json.encode


# -- deciding and resolving -------------------------------------------------------------------


@dataclass(frozen=True)
class RelayTarget:
    """What LiteLLM resolved for one deployment, once."""

    url: URL
    origin: str  # scheme://host:port: one pooled session each
    headers: dict[str, str]
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
    config (``OpenAIGPTConfig``), a base URL is known, and the Router's retries and fallbacks are not
    needed (those stay LiteLLM's job).
    """
    if not dep.fast_path or dep.fallbacks or dep.num_retries:
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
    return RelayTarget(
        url=URL(url),
        origin=str(URL(url).origin()),
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
    """Streams and completes through one pooled aiohttp session per upstream host."""

    #: Connections per upstream host. One open stream holds one connection, so this bounds how many
    #: streams a worker relays at once per host; streams beyond it wait (with heartbeats) for a slot.
    POOL_SIZE = 10_000

    def __init__(self, targets: dict[str, RelayTarget], *, pool_size: int = POOL_SIZE) -> None:
        self.targets = targets
        self._pool_size = pool_size
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, target: RelayTarget) -> aiohttp.ClientSession:
        host = target.origin
        session = self._sessions.get(host)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=self._pool_size, keepalive_timeout=30, ttl_dns_cache=300
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),  # an API relay keeps no cookies between callers
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
            self._sessions[host] = session
        return session

    def open_sessions(self) -> None:
        for target in self.targets.values():
            self._session(target)

    async def _post(self, target: RelayTarget, body: bytes, *, stream: bool) -> aiohttp.ClientResponse:
        try:
            response = await self._session(target).post(
                target.url,
                data=body,
                headers=target.headers,
                timeout=aiohttp.ClientTimeout(
                    # Streams get no read timeout here: the stream's own first-chunk and idle
                    # deadlines apply, without a timer re-armed on every read.
                    total=None if stream else target.timeout_s,
                    sock_connect=10,
                    sock_read=None if stream else target.timeout_s,
                ),
            )
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors (some also ClientErrors)
            raise UpstreamTimeout("The provider did not answer in time.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"The provider could not be reached: {type(exc).__name__}") from exc
        if response.status != 200:
            try:
                error_body = await response.read()
            except (aiohttp.ClientError, OSError):
                error_body = b""
            finally:
                response.release()
            raise error_from_reply(response.status, error_body, response.headers)
        return response

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        target = self.targets[deployment]
        response = await self._post(target, request_body(target, request, stream=False), stream=False)
        try:
            raw = await response.read()
        except TimeoutError as exc:
            response.close()
            raise UpstreamTimeout("The provider did not complete the call in time.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            response.close()
            raise UpstreamUnavailable("The provider's answer broke off.") from exc
        response.release()
        try:
            usage = completion_usage(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamUnavailable("The provider's answer was not valid JSON.") from exc
        return Completion(raw=raw, usage=usage)

    async def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        target = self.targets[deployment]
        response = await self._post(target, request_body(target, request, stream=True), stream=True)
        finished = False
        try:
            buffer = b""
            async for data in response.content.iter_any():
                buffer += data.replace(b"\r\n", b"\n") if b"\r" in data else data
                while True:
                    end = buffer.find(b"\n\n")
                    if end < 0:
                        break
                    event, buffer = buffer[:end], buffer[end + 2 :]
                    payload = _data_of(event)
                    if payload is None:
                        continue
                    if payload == b"[DONE]":
                        finished = True
                        return
                    try:
                        yield read_chunk(payload)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise UpstreamUnavailable("The provider sent an unreadable chunk.") from exc
            # The body ended without [DONE]: the provider broke off.
            raise UpstreamUnavailable("The provider's stream broke off before it finished.")
        except TimeoutError as exc:
            raise UpstreamTimeout("The provider went silent for longer than the deployment's timeout.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"The provider's stream broke off: {type(exc).__name__}") from exc
        finally:
            if finished:
                response.release()  # read to the end: the connection goes back to the pool
            else:
                response.close()  # closes the socket at once: the provider sees the client leave

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _data_of(event: bytes) -> bytes | None:
    """The data of one SSE event (CRLF tolerated); comments and other fields are ignored."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:].rstrip(b"\r")  # the common case: one data line
    lines = [line.rstrip(b"\r") for line in event.split(b"\n")]
    data = [line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in lines]
    parts = [d for d in data if d is not None]
    return b"\n".join(parts) if parts else None
