"""What the relay sends: a deployment resolved once (``RelayTarget``), and each request's body.

A deployment takes the relay when its provider speaks OpenAI's wire: its URL and headers are
resolved once, at start-up, and a request's body is the client's own body with what the deployment
needs changed (its model, ``stream``, usage asked for, the output cap's name for OpenAI), so no
per-request work is done on the client's fields and nothing in them makes the gateway fetch or read
anything. The common OpenAI-wire providers are resolved from a table here, without importing
LiteLLM; any other provider is asked of LiteLLM's own chat config once (imported then), which keeps
the relay for every provider LiteLLM itself reaches through an OpenAI-wire config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from yarl import URL

from app.config.settings import DeploymentSettings
from app.domain.chat_request import ChatCompletionInput
from app.providers.base import asking_for_usage
from app.providers.demo import is_demo
from app.providers.upstream import RequestTemplate

#: OpenAI-wire providers (LiteLLM's names) and their default base URL; None: ``api_base`` is required.
#: The URLs are LiteLLM's own (tests/providers/test_relay.py checks them against it).
OPENAI_WIRE: dict[str, str | None] = {
    "openai": "https://api.openai.com/v1",
    "openai_like": None,
    "custom_openai": None,
    "hosted_vllm": None,
    "vllm": None,
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/beta",
    "together_ai": "https://api.together.ai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "xai": "https://api.x.ai/v1",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "perplexity": "https://api.perplexity.ai",
    "cerebras": "https://api.cerebras.ai/v1",
    "nvidia_nim": "https://integrate.api.nvidia.com/v1",
}
#: The client's body fields the relay writes itself (the deployment's model, the stream flag, usage
#: asked for); every other field, the messages included, goes to the provider as sent. Not LiteLLM's
#: set (``litellm_provider.py``), which names ``Router.acompletion``'s own arguments.
_REWRITTEN_FIELDS = frozenset({"model", "stream", "stream_options"})
OPENAI_HOST = "api.openai.com"
_encode = msgspec.json.encode


@dataclass(frozen=True)
class RelayTarget:
    """One deployment's provider call, resolved once."""

    url: URL
    origin: str  # scheme://host:port: one connection pool each
    request: RequestTemplate  # the POST, prepared but for its body
    headers: dict[str, str]  # its headers, for a request that adds its own (trace context)
    model: str
    timeout_s: float
    #: OpenAI's own API: its reasoning models refuse ``max_tokens`` and every model takes
    #: ``max_completion_tokens``, so the output cap is sent under that name.
    completion_tokens: bool = False

    @classmethod
    def to(cls, url: URL, headers: dict[str, str], model: str, timeout_s: float) -> RelayTarget:
        """The POST to ``url`` with ``headers`` (its pool keyed by the URL's origin)."""
        return cls(
            url=url,
            origin=str(url.origin()),
            request=RequestTemplate(url, headers),
            headers=headers,
            model=model,
            timeout_s=timeout_s,
            completion_tokens=url.host == OPENAI_HOST,
        )


def resolve_target(dep: DeploymentSettings, environ: Mapping[str, str]) -> RelayTarget | None:
    """A RelayTarget when the fast path applies to ``dep``, else None (it keeps the full LiteLLM path).

    Applies when the deployment allows it, its provider speaks OpenAI's wire and a base URL is known.
    Retries, cooldowns and fallbacks do not matter here: they sit in front of both paths
    (``providers/resilient.py``).
    """
    if not dep.fast_path or is_demo(dep.litellm_model):
        return None  # the demo models are served in process (demo.py)
    provider, sep, model = dep.litellm_model.partition("/")
    if not sep:
        return None
    api_key = environ.get(dep.api_key_env, "") if dep.api_key_env else "no-key"
    if provider in OPENAI_WIRE:
        base = dep.api_base or OPENAI_WIRE[provider]
        if not base:
            return None
        url = f"{base.rstrip('/')}/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    else:
        resolved = _resolve_with_litellm(dep, api_key)
        if resolved is None:
            return None
        model, url, headers = resolved
    headers = {**headers, "Accept-Encoding": "identity"}  # a compressed stream would buffer upstream
    return RelayTarget.to(URL(url), headers, model, dep.timeout_s)


def _resolve_with_litellm(dep: DeploymentSettings, api_key: str) -> tuple[str, str, dict[str, str]] | None:
    """(model, URL, headers) from LiteLLM's chat config when it is an OpenAI-wire one, else None."""
    from app.providers.litellm_setup import import_litellm

    litellm = import_litellm()
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
    headers = config.validate_environment(
        headers={}, model=model, messages=[], optional_params={}, litellm_params={}, api_key=api_key, api_base=base
    )
    url = config.get_complete_url(
        api_base=base, api_key=api_key, model=model, optional_params={}, litellm_params={}, stream=True
    )
    return model, url, dict(headers)


def request_body(target: RelayTarget, request: ChatCompletionInput, *, stream: bool) -> bytes:
    """The client's body as the provider gets it: its own fields as sent (the gateway has validated
    them and refused provider-layer controls), the deployment's model, usage asked for, and for
    OpenAI's own API the output cap under the name all its models take."""
    body = {k: v for k, v in request.body.items() if k not in _REWRITTEN_FIELDS}
    body["model"] = target.model
    body["stream"] = stream
    if target.completion_tokens and "max_tokens" in body and "max_completion_tokens" not in body:
        # The Messages and Responses APIs' caps arrive as max_tokens (and so do older clients').
        body["max_completion_tokens"] = body.pop("max_tokens")
    if stream:
        body["stream_options"] = asking_for_usage(request.body.get("stream_options"))
    return _encode(body)
