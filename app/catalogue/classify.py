"""Classification as pure functions over a catalogue snapshot: capabilities, categories, search.

Nothing here fetches anything: callers pass the snapshot (the origin service refetched the model
list for every question).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

#: LiteLLM metadata flag -> the capability name of API.md 3.
CAPABILITY_FLAGS: dict[str, str] = {
    "supports_vision": "vision",
    "supports_function_calling": "tools",
    "supports_reasoning": "reasoning",
    "supports_response_schema": "json_mode",
    "supports_audio_input": "audio_input",
    "supports_audio_output": "audio_output",
    "supports_prompt_caching": "prompt_caching",
    "supports_pdf_input": "pdf_input",
    "supports_web_search": "web_search",
    "supports_parallel_function_calling": "parallel_tools",
    "supports_system_messages": "system_messages",
}
KNOWN_CAPABILITIES = frozenset(CAPABILITY_FLAGS.values())

#: Upper bounds (exclusive) of the context-size and price bands.
CONTEXT_BANDS: tuple[tuple[str, float], ...] = (
    ("small", 32_000),
    ("medium", 128_000),
    ("large", 1_000_000),
    ("xlarge", float("inf")),
)
PRICE_BANDS: tuple[tuple[str, float], ...] = (
    ("free", 1e-12),
    ("budget", 1.0),
    ("standard", 10.0),
    ("premium", float("inf")),
)


class ModelInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    provider: str | None
    mode: str | None
    max_input_tokens: int | None
    max_output_tokens: int | None
    input_cost_per_mtok: float | None
    output_cost_per_mtok: float | None
    capabilities: list[str]
    categories: list[str]
    #: How many configured deployments serve this public name; only shown for a group (more than one).
    deployments: int = 1


def capabilities_of(metadata: Mapping[str, Any]) -> list[str]:
    return sorted({name for flag, name in CAPABILITY_FLAGS.items() if metadata.get(flag)})


def _band(value: float | None, bands: Iterable[tuple[str, float]]) -> str | None:
    if value is None:
        return None
    for name, upper in bands:
        if value < upper:
            return name
    return None  # pragma: no cover - the last band is unbounded


def categories_of(
    provider: str | None,
    mode: str | None,
    capabilities: Iterable[str],
    max_input_tokens: int | None,
    input_cost_per_mtok: float | None,
) -> list[str]:
    found = []
    if provider:
        found.append(f"provider:{provider}")
    if mode:
        found.append(f"mode:{mode}")
    found.extend(f"capability:{c}" for c in capabilities)
    context = _band(max_input_tokens, CONTEXT_BANDS)
    if context:
        found.append(f"context:{context}")
    price = _band(input_cost_per_mtok, PRICE_BANDS)
    if price:
        found.append(f"price:{price}")
    return found


def categories(models: Iterable[ModelInfo]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for model in models:
        for category in model.categories:
            out.setdefault(category, []).append(model.id)
    return {k: sorted(v) for k, v in sorted(out.items())}


class Criteria(msgspec.Struct, frozen=True):
    capabilities: tuple[str, ...] = ()
    provider: str | None = None
    mode: str | None = None
    category: str | None = None
    min_context: int | None = None
    max_input_cost: float | None = None


def matches(model: ModelInfo, criteria: Criteria) -> bool:
    if any(c not in model.capabilities for c in criteria.capabilities):
        return False
    if criteria.provider is not None and model.provider != criteria.provider:
        return False
    if criteria.mode is not None and model.mode != criteria.mode:
        return False
    if criteria.category is not None and criteria.category not in model.categories:
        return False
    if criteria.min_context is not None and (
        model.max_input_tokens is None or model.max_input_tokens < criteria.min_context
    ):
        return False
    return not (
        criteria.max_input_cost is not None
        and (model.input_cost_per_mtok is None or model.input_cost_per_mtok > criteria.max_input_cost)
    )


def search(models: Iterable[ModelInfo], criteria: Criteria) -> list[ModelInfo]:
    return [m for m in models if matches(m, criteria)]
