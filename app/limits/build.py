"""The limiter the configuration asks for, built once in the lifespan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.config.settings import Settings
from app.limits.backend import LimitBackend
from app.limits.limiter import Limiter, PriceLookup
from app.limits.memory import MemoryBackend

if TYPE_CHECKING:
    from app.redis.breakers import RedisBreakers


def build_limiter(
    settings: Settings, *, prices: PriceLookup | None, observer: Any = None, breakers: RedisBreakers | None = None
) -> Limiter:
    rl = settings.rate_limit
    backend: LimitBackend
    if rl.backend == "redis":
        from app.limits.redis_backend import RedisBackend

        breaker = breakers.user(settings.redis.url, "rate_limit", rl.op_timeout_s) if breakers else None
        backend = RedisBackend(
            settings.redis.url, lease_ttl_s=rl.lease_ttl_s, op_timeout_s=rl.op_timeout_s, breaker=breaker
        )
    else:
        backend = MemoryBackend()
    return Limiter(backend, on_backend_error=rl.on_backend_error, prices=prices, observer=observer)
