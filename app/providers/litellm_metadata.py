"""Model metadata that LiteLLM ships (its local cost map), for the catalogue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.providers.litellm_setup import import_litellm

litellm = import_litellm()

# A copy taken before any Router exists: a Router registers its deployments in `model_cost` with
# zero prices, which would turn "unknown" into "free".
_SHIPPED: dict[str, Mapping[str, Any]] = dict(litellm.model_cost)


def provider_of(litellm_model: str) -> str | None:
    try:
        return str(litellm.get_llm_provider(model=litellm_model)[1])
    except Exception:
        prefix, sep, _ = litellm_model.partition("/")
        return prefix if sep else None


def model_metadata(litellm_model: str) -> Mapping[str, Any] | None:
    entry = _SHIPPED.get(litellm_model)
    if entry is not None:
        return entry
    provider, sep, model = litellm_model.partition("/")
    if not sep:
        return None
    entry = _SHIPPED.get(model)
    if entry is not None and entry.get("litellm_provider") in (provider, provider_of(litellm_model)):
        return entry
    return None
