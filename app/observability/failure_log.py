"""What a request's log line says about a failed upstream call: the deployment, its host, the exception.

A bare ``"status": 502`` does not tell an operator which provider failed or how; the client's error
message is deliberately vague about internals. These fields go to the log only, never to the client.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from app.config.settings import DeploymentSettings, Settings
from app.domain.errors import GatewayError


def error_chain(error: BaseException) -> list[str]:
    """Class names from the gateway's error down to the root cause (``raise ... from``, or the implicit context)."""
    names: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(names) < 8:
        seen.add(id(current))
        module = type(current).__module__
        names.append(
            type(current).__qualname__
            if module in ("builtins", "app.domain.errors")
            else f"{module}.{type(current).__qualname__}"
        )
        current = current.__cause__ or current.__context__
    return names


@lru_cache(maxsize=256)
def upstream_host(litellm_model: str, api_base: str) -> str:
    """The host the deployment calls: its ``api_base``, else the provider's default as LiteLLM knows it."""
    if api_base:
        return urlsplit(api_base).netloc or api_base
    try:
        from app.providers.litellm_setup import import_litellm  # imported already once the app serves

        _model, provider, _key, default_base = import_litellm().get_llm_provider(litellm_model)
    except Exception:
        return "unknown"
    if default_base:
        return urlsplit(default_base).netloc or default_base
    if provider == "openai":
        return "api.openai.com"
    return f"{provider} default endpoint"


def _deployment(scope: Any, model: str | None) -> DeploymentSettings | None:
    settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
    if not isinstance(settings, Settings) or not model:
        return None
    return settings.deployment(model)


def upstream_failure(scope: Any, model: str | None, error: BaseException) -> dict[str, Any]:
    """Log fields for a request that ended with a server-side error; nothing for the client's own mistakes."""
    if isinstance(error, GatewayError) and error.status < 500:
        return {}
    chain = error_chain(error)
    fields: dict[str, Any] = {"error_class": chain[-1], "error_chain": " <- ".join(chain)}
    dep = _deployment(scope, model)
    if dep is not None:
        fields.update(
            deployment=dep.name,
            provider_model=dep.litellm_model,
            upstream_host=upstream_host(dep.litellm_model, dep.api_base),
        )
    return fields
