"""The start-up banner of ``python -m app``: what is about to be served, then how long it took.

Plain text on stderr, for the person who just started the server: the first lines come before
LiteLLM's import (seconds of silence otherwise), the last one when the listener accepts connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from app.config.settings import Settings

#: Models listed by name before the banner says "+N more".
MAX_MODELS_SHOWN = 8


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"  # the wildcard is where it listens, not an address a browser can open
    return f"[{host}]" if ":" in host else host


def base_url(settings: Settings) -> str:
    return f"http://{_url_host(settings.server.host)}:{settings.server.port}"


def listen_address(settings: Settings) -> str:
    host = settings.server.host
    shown = f"[{host}]" if ":" in host else host
    everywhere = " (all interfaces)" if host in ("0.0.0.0", "::", "") else ""
    return f"{shown}:{settings.server.port}{everywhere}"


def models_served(settings: Settings) -> str:
    seen: dict[str, str] = {}
    for dep in settings.models.deployments:
        seen.setdefault(dep.name, dep.litellm_model)
    shown = [f"{name} ({target})" for name, target in list(seen.items())[:MAX_MODELS_SHOWN]]
    more = len(seen) - len(shown)
    return ", ".join(shown) + (f", +{more} more" if more > 0 else "")


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def cache_backend(settings: Settings) -> str:
    cache = settings.cache
    if not cache.enabled:
        return "off"
    if cache.backend == "redis":
        return f"redis {_without_password(cache.redis_url)}, ttl {cache.ttl_s:g} s"
    return f"memory (this process), up to {cache.max_entries} entries / {cache.max_memory_mb} MB, ttl {cache.ttl_s:g} s"


def auth(settings: Settings, environ: Mapping[str, str]) -> str:
    """Who may call: nobody is asked for a key, or how many gateway keys and which named keys there are."""
    env_name = settings.server.api_keys_env
    unnamed = [k for k in environ.get(env_name, "").split(",") if k.strip()] if env_name else []
    named = [k.name for k in settings.keys]
    if not unnamed and not named:
        return "none: every caller is served without a key (set server.api_keys_env or [[keys]])"
    parts = []
    if unnamed:
        parts.append(f"{len(unnamed)} gateway key{'s' * (len(unnamed) != 1)} from {env_name}")
    if named:
        parts.append(f"{len(named)} named key{'s' * (len(named) != 1)} ({', '.join(named)})")
    return ", ".join(parts)


def _limit_text(rpm: int, tpm: int, streams: int, budget: float | None, window: str) -> str:
    shown = [
        f"{rpm} requests/min" if rpm else "",
        f"{tpm} tokens/min" if tpm else "",
        f"{streams} streams" if streams else "",
        f"${budget:g} per {window}" if budget is not None and window != "total" else "",
        f"${budget:g} in total" if budget is not None and window == "total" else "",
    ]
    return ", ".join(s for s in shown if s) or "none"


def limits(settings: Settings) -> str:
    """The defaults (every caller's when there are no keys) and each named key's own limits, as enforced."""
    rl = settings.rate_limit
    default = _limit_text(rl.requests_per_minute, rl.tokens_per_minute, rl.concurrent_streams, None, "")
    if not settings.keys:
        return default
    per_key = [
        f"{k.name}: "
        + _limit_text(
            rl.requests_per_minute if k.requests_per_minute is None else k.requests_per_minute,
            rl.tokens_per_minute if k.tokens_per_minute is None else k.tokens_per_minute,
            rl.concurrent_streams if k.concurrent_streams is None else k.concurrent_streams,
            k.budget_usd,
            k.budget_window,
        )
        for k in settings.keys
    ]
    return "; ".join([f"default: {default}", *per_key])


def opening_lines(
    settings: Settings,
    config_file: Path,
    version: str,
    *,
    source: str = "default",
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    workers = settings.server.workers
    return [
        f"chat-gateway {version}",
        f"  config   {config_file} ({'the default' if source == 'default' else 'from ' + source})",
        f"  listen   {listen_address(settings)}" + (f", {workers} worker processes" if workers > 1 else ""),
        f"  models   {models_served(settings)}",
        f"  auth     {auth(settings, environ or {})}",
        f"  cache    {cache_backend(settings)}",
        f"  limits   {limits(settings)}",
    ]


def loading_line(litellm: bool) -> str:
    """``litellm``: a deployment needs LiteLLM's full path, whose import takes seconds."""
    return "  loading providers (LiteLLM's import takes a few seconds)..." if litellm else "  loading providers..."


def ready_line(settings: Settings, seconds: float) -> str:
    return f"  ready in {seconds:.1f} s: {base_url(settings)}/ (chat page; API reference at /schema/swagger)"


def write_line(text: str, file: IO[str]) -> None:
    """``text`` and its newline in one ``write``: the ready line is written from the ready watch's
    thread while the server may already be logging, and ``print`` writes the text and the newline
    separately, so a log line written between them was glued to the banner's (and lost to a reader
    of JSON lines)."""
    file.write(f"{text}\n")
    file.flush()
