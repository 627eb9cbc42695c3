"""What the relay sends to an Anthropic deployment: the deployment resolved once, and each call's body.

A Messages API request for a model whose deployments are all Anthropic ones carries the client's own
Anthropic body (``ChatCompletionInput.anthropic``, set by the Messages route only). An Anthropic
deployment that allows the fast path sends that body as it came, with the deployment's model and
the call's ``stream`` written in, to ``{api_base}/v1/messages``: nothing is translated there and
back, so what only Anthropic has (``cache_control`` marks, signed thinking blocks, Anthropic's own
controls and tools) reaches it unchanged. Resolved without LiteLLM: Anthropic's wire is one URL and
three headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec
from yarl import URL

from app.config.settings import DeploymentSettings
from app.domain.chat_request import NativeRequest
from app.providers.relay_target import RelayTarget

#: LiteLLM's prefix for Anthropic's own API (``anthropic/claude-...``).
PROVIDER: Final = "anthropic"
DEFAULT_BASE: Final = "https://api.anthropic.com"
#: The API version sent when the client names none (the one Anthropic's SDKs send).
DEFAULT_VERSION: Final = "2023-06-01"
#: Where a deployment's key is read when it names no ``api_key_env`` (as LiteLLM reads it).
DEFAULT_KEY_ENV: Final = "ANTHROPIC_API_KEY"
_ROUTE: Final = "/v1/messages"
_encode = msgspec.json.encode


def is_anthropic(litellm_model: str) -> bool:
    return litellm_model.startswith(PROVIDER + "/")


def messages_url(api_base: str) -> str:
    """``api_base`` + ``/v1/messages``, unless it already ends so (as LiteLLM builds it)."""
    base = (api_base or DEFAULT_BASE).rstrip("/")
    return base if URL(base).path.endswith(_ROUTE) else base + _ROUTE


def resolve_anthropic_target(dep: DeploymentSettings, environ: Mapping[str, str]) -> RelayTarget | None:
    """The relay's call to ``dep`` for Messages API requests, when it is an Anthropic deployment that
    allows the fast path; None otherwise (it keeps LiteLLM)."""
    if not dep.fast_path or not is_anthropic(dep.litellm_model):
        return None
    model = dep.litellm_model[len(PROVIDER) + 1 :]
    if not model:
        return None
    api_key = environ.get(dep.api_key_env or DEFAULT_KEY_ENV, "")
    url = URL(messages_url(dep.api_base))
    headers = {
        "x-api-key": api_key,
        "anthropic-version": DEFAULT_VERSION,
        "content-type": "application/json",
        "accept-encoding": "identity",  # a compressed stream would buffer upstream
    }
    return RelayTarget.to(url, headers, model, dep.timeout_s)


def anthropic_body(target: RelayTarget, native: NativeRequest, *, stream: bool) -> bytes:
    """The client's Messages body as Anthropic gets it: as sent, with the deployment's model and the
    call's ``stream`` (the Messages route has validated it and left out what is never passed on)."""
    return _encode({**native.body, "model": target.model, "stream": stream})
