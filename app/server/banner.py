"""The start-up banner of ``python -m app``: what is about to be served, then how long it took.

Plain text on stderr, for the person who just started the server: the first lines come before
LiteLLM's import (seconds of silence otherwise), the last one when the listener accepts connections.
"""

from __future__ import annotations

from pathlib import Path
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
    return f"memory (this process), up to {cache.max_entries} entries, ttl {cache.ttl_s:g} s"


def limits(settings: Settings) -> str:
    rl = settings.rate_limit
    if not (rl.requests_per_minute or rl.concurrent_streams):
        return "none"
    # The keys are validated today but nothing enforces them yet; say so rather than imply protection.
    return (
        f"rate_limit.requests_per_minute={rl.requests_per_minute}, "
        f"rate_limit.concurrent_streams={rl.concurrent_streams} (accepted, not enforced by this version)"
    )


def opening_lines(settings: Settings, config_file: Path, version: str) -> list[str]:
    workers = settings.server.workers
    return [
        f"chat-gateway {version}",
        f"  config   {config_file}",
        f"  listen   {listen_address(settings)}" + (f", {workers} worker processes" if workers > 1 else ""),
        f"  models   {models_served(settings)}",
        f"  cache    {cache_backend(settings)}",
        f"  limits   {limits(settings)}",
    ]


def loading_line() -> str:
    return "  loading providers (LiteLLM's import takes a few seconds)..."


def ready_line(settings: Settings, seconds: float) -> str:
    return f"  ready in {seconds:.1f} s: {base_url(settings)}/ (chat page; API reference at /schema/swagger)"
