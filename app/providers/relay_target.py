"""What the relay sends: a deployment resolved once by LiteLLM (``RelayTarget``), and each request's body.

LiteLLM's own OpenAI-wire chat config does the work (URL, headers, parameter mapping), so the relay
sends what LiteLLM would have sent; only the HTTP call and the stream's reading are the relay's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from yarl import URL

from app.config.settings import DeploymentSettings
from app.domain.chat_request import ChatCompletionInput
from app.domain.errors import ProviderRejected
from app.providers.base import asking_for_usage
from app.providers.litellm_setup import import_litellm
from app.providers.upstream import RequestTemplate

litellm = import_litellm()

_OWN_FIELDS = frozenset({"model", "messages"})
_encode = msgspec.json.encode


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
