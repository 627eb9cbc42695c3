"""Configuration checks that need LiteLLM: each deployment's provider prefix, and building the providers.

``app.config.settings`` validates what can be checked without LiteLLM (it stays import-light, so config
errors come back in a fraction of a second). What only LiteLLM knows, such as whether ``opnai`` is a
provider, is checked here, before the server starts, so that a typo is one ``config error`` line
and exit 2 rather than a traceback from the start-up of the app ten seconds later.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from app.config.settings import Settings

#: Shown when a prefix is nothing like any provider: the ones most configurations use.
_COMMON = ("openai", "anthropic", "gemini", "azure", "ollama_chat", "hosted_vllm", "openrouter", "groq")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def known_providers(litellm: Any) -> list[str]:
    providers = [str(getattr(p, "value", p)) for p in litellm.provider_list]
    providers += [str(p["provider"]) for p in getattr(litellm, "custom_provider_map", [])]
    return sorted(set(providers))


def _prefix_problem(litellm_model: str, exc: BaseException, providers: list[str]) -> str:
    prefix = litellm_model.partition("/")[0]
    if prefix not in providers:
        near = difflib.get_close_matches(prefix, providers, n=1)
        examples = ", ".join(p for p in _COMMON if p in providers)
        hint = f"; did you mean {near[0]!r}?" if near else f" (LiteLLM knows {len(providers)}, e.g. {examples})"
        return f"unknown provider {prefix!r} in {litellm_model!r}{hint}"
    # A known provider that still refuses the string: LiteLLM's own first line says why.
    return f"LiteLLM cannot use {litellm_model!r}: {_first_line(exc).removeprefix('litellm.BadRequestError: ')}"


def provider_problems(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """One ``<key>: <why>`` line per deployment LiteLLM cannot serve; empty when the providers build.

    Imports LiteLLM (the slow part of start-up) unless every deployment takes the relay. Building the
    Router once here costs a few hundred milliseconds and means every failure to build the providers
    is reported as configuration, not as a start-up traceback.
    """
    from app.providers.relay_target import OPENAI_WIRE

    def native(litellm_model: str, api_base: str, fast_path: bool) -> bool:
        provider, sep, _ = litellm_model.partition("/")
        return fast_path and bool(sep) and provider in OPENAI_WIRE and bool(api_base or OPENAI_WIRE[provider])

    if all(native(d.litellm_model, d.api_base, d.fast_path) for d in settings.models.deployments):
        # Every deployment takes the relay, resolved without LiteLLM: only the URLs can be wrong.
        return [
            f"models.deployments[{i}].api_base: expected an http:// or https:// URL, got {dep.api_base!r}"
            for i, dep in enumerate(settings.models.deployments)
            if dep.api_base
            and (urlsplit(dep.api_base).scheme not in ("http", "https") or not urlsplit(dep.api_base).netloc)
        ]
    from app.providers.demo import register_demo_provider
    from app.providers.litellm_provider import build_router
    from app.providers.litellm_setup import import_litellm

    litellm = import_litellm()
    register_demo_provider()  # the built-in `demo/` provider is known to LiteLLM once registered
    providers = known_providers(litellm)
    problems: list[str] = []
    for i, dep in enumerate(settings.models.deployments):
        base = urlsplit(dep.api_base)
        if dep.api_base and (base.scheme not in ("http", "https") or not base.netloc):
            # The relay's client and LiteLLM both need an absolute URL; "localhost:11434" is a common slip.
            problems.append(
                f"models.deployments[{i}].api_base: expected an http:// or https:// URL, got {dep.api_base!r}"
            )
            continue
        try:
            litellm.get_llm_provider(dep.litellm_model, api_base=dep.api_base or None)
        except Exception as exc:
            problems.append(
                f"models.deployments[{i}].litellm_model: {_prefix_problem(dep.litellm_model, exc, providers)}"
            )
    if problems:
        return problems
    try:
        build_router(settings, environ)
    except Exception as exc:
        problems.append(f"models.deployments: the providers cannot be built: {type(exc).__name__}: {_first_line(exc)}")
    return problems
