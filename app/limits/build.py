"""The limiter the configuration asks for, built once in the lifespan."""

from __future__ import annotations

from typing import Any

from app.config.settings import Settings
from app.limits.backend import LimitBackend
from app.limits.limiter import Limiter, PriceLookup
from app.limits.memory import MemoryBackend


def build_limiter(settings: Settings, *, prices: PriceLookup | None, observer: Any = None) -> Limiter:
    rl = settings.rate_limit
    backend: LimitBackend
    if rl.backend == "redis":
        from app.limits.redis_backend import RedisBackend

        backend = RedisBackend(settings.redis.url, lease_ttl_s=rl.lease_ttl_s, op_timeout_s=rl.op_timeout_s)
    else:
        backend = MemoryBackend()
    return Limiter(backend, on_backend_error=rl.on_backend_error, prices=prices, observer=observer)
