"""One embeddings call to one deployment: the relay's HTTP client for OpenAI-compatible providers,
LiteLLM for the others.

A deployment takes the relay when the chat relay would (``resolve_target``: LiteLLM's OpenAI-wire
config and a base URL); its embeddings URL is the chat URL's sibling (``.../embeddings``) with the
same headers. Errors become the gateway's at this boundary, with provider text redacted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from yarl import URL

from app.api.embeddings.wire import Embeddings, EmbeddingsRequest, read_reply, upstream_body
from app.config.settings import DeploymentSettings
from app.domain.errors import GatewayError, InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from app.providers.chunks import error_from_reply
from app.providers.egress import EgressSettings
from app.providers.quoting import ProviderText
from app.providers.relay_target import resolve_target
from app.providers.translate import from_litellm
from app.providers.upstream import RequestTemplate, UpstreamConnectionError, UpstreamPool

#: The most one embeddings answer may hold: 2048 inputs of 3072 floats as JSON is about 120 MB;
#: batches that large are not what a gateway relays, so this bounds memory well below it.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class _Target(msgspec.Struct, frozen=True):
    url: URL
    request: RequestTemplate
    model: str
    headers: dict[str, str]


def _embeddings_url(chat_url: URL) -> URL:
    path = chat_url.path
    base = path[: -len("/chat/completions")] if path.endswith("/chat/completions") else path.rstrip("/")
    return chat_url.with_path(f"{base}/embeddings", encoded=False).with_query(chat_url.query)


class EmbeddingsUpstream:
    def __init__(
        self,
        deployments: list[DeploymentSettings],
        environ: Mapping[str, str],
        quote: ProviderText,
        egress: EgressSettings | None = None,
    ) -> None:
        self._quote = quote
        self._egress = egress
        self._environ = environ
        self._targets: dict[str, _Target] = {}
        self._pools: dict[str, UpstreamPool] = {}
        for dep in deployments:
            target = resolve_target(dep, environ)
            if target is not None:
                url = _embeddings_url(target.url)
                self._targets[dep.id] = _Target(url, RequestTemplate(url, target.headers), target.model, target.headers)

    def relayed(self, deployment_id: str) -> bool:
        return deployment_id in self._targets

    async def embed(
        self, dep: DeploymentSettings, request: EmbeddingsRequest, trace: dict[str, str] | None = None
    ) -> Embeddings:
        """One call; ``trace``: the W3C trace context for the provider's request (tracing on)."""
        target = self._targets.get(dep.id)
        if target is not None:
            return await self._relay(target, request, trace)
        return await self._litellm(dep, request, trace)

    def _pool(self, url: URL) -> UpstreamPool:
        origin = str(url.origin())
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = UpstreamPool(url, egress=self._egress)
        return pool

    async def _relay(self, target: _Target, request: EmbeddingsRequest, trace: dict[str, str] | None) -> Embeddings:
        body = msgspec.json.encode(upstream_body(request, target.model))
        # A traced call carries its context: a template of its own (only when tracing is on).
        template = RequestTemplate(target.url, {**target.headers, **trace}) if trace else target.request
        try:
            response = await self._pool(target.url).post(template, body)
        except TimeoutError as exc:
            raise UpstreamTimeout("The provider could not be reached in time.") from exc
        except (UpstreamConnectionError, OSError) as exc:
            raise UpstreamUnavailable(f"The provider could not be reached: {type(exc).__name__}") from exc
        try:
            raw = await response.read(limit=MAX_ANSWER_BYTES + 1)
        except (UpstreamConnectionError, OSError) as exc:
            response.close()
            raise UpstreamUnavailable("The provider's answer broke off.") from exc
        except BaseException:
            response.close()
            raise
        if response.status != 200:
            response.release()
            raise self._quote.quote(error_from_reply(response.status, raw[:65_536], response.headers))
        if len(raw) > MAX_ANSWER_BYTES:
            response.close()
            raise UpstreamUnavailable("The provider's answer was larger than the gateway accepts.")
        response.release()
        return read_reply(raw)

    async def _litellm(
        self, dep: DeploymentSettings, request: EmbeddingsRequest, trace: dict[str, str] | None
    ) -> Embeddings:
        from app.providers.litellm_setup import import_litellm

        litellm = import_litellm()
        _check_token_arrays(litellm, dep.litellm_model, request.input)
        params: dict[str, Any] = {"model": dep.litellm_model, "input": request.input}
        # Retries and fallbacks are the gateway's (Resilient), never the client library's as well.
        # OpenAI's optional fields (``user``) go to the providers that take them and are dropped for
        # the rest (Cohere, Gemini, Ollama, ... refuse them); the answer is floats by default.
        params.update(timeout=dep.timeout_s, num_retries=0, max_retries=0, drop_params=True)
        if dep.api_base:
            params["api_base"] = dep.api_base
        if dep.api_key_env:
            params["api_key"] = self._environ.get(dep.api_key_env, "")
        elif dep.api_base:
            params["api_key"] = "no-key"
        if request.dimensions is not None:
            params["dimensions"] = request.dimensions
            # LiteLLM only believes in `dimensions` for the models it knows take it; the provider
            # is the one to say whether this model does.
            params["allowed_openai_params"] = ["dimensions"]
        if request.user is not None:
            params["user"] = request.user
        if trace:
            params["extra_headers"] = trace  # ours: clients never set this field
        try:
            response = await litellm.aembedding(**params)
        except GatewayError as exc:
            raise self._quote.quote(exc) from None
        except Exception as exc:
            exc.__traceback__ = None  # LiteLLM keeps it in a cycle of its own (litellm_provider.py)
            raise self._quote.quote(from_litellm(exc)) from None
        return read_reply(msgspec.json.encode(response.model_dump(exclude_none=True)))

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


#: LiteLLM providers whose embeddings translation refuses token arrays itself, in a way LiteLLM
#: reports as a connection error (a 502, retried and failed over): Cohere's. Every other provider
#: gets the client's input and answers for itself (OpenAI-wire servers take token arrays; Gemini's and
#: Ollama's translations, and providers that take text only, refuse them with a 400).
_TEXT_ONLY_PROVIDERS = frozenset({"cohere", "cohere_chat"})


def _check_token_arrays(litellm: Any, model: str, value: Any) -> None:
    """400 ``unsupported_content`` for token-array input to a provider LiteLLM gives text only."""
    tokens = isinstance(value, list) and any(not isinstance(item, str) for item in value)
    if not tokens:
        return
    try:
        provider = litellm.get_llm_provider(model)[1]
    except Exception:
        provider = model.partition("/")[0]
    if provider in _TEXT_ONLY_PROVIDERS:
        raise InvalidRequest(
            "`input`: this model's deployment takes text only; send strings, not token arrays.",
            code="unsupported_content",
            param="input",
        )
