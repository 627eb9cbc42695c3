"""One circuit breaker per Redis server, shared by every feature that uses it (cache, limits, resume).

Built once in the lifespan and handed to each feature as a ``BreakerUser`` (its own op bound, the
shared state). Features on the same server (host and port; the database number does not matter, a
stalled server stalls all of them) share one breaker: the first timeout of any of them opens it, and
from then on none of them spends anything on Redis until one probe (a PING on a connection of the
breaker's own) answers. Without this, each feature paid its own op bound to find out, and the
limiter tried again every 0.5 s with every request that arrived during its try, which cost every
request the op bound for the whole of a stall.
"""

from __future__ import annotations

from urllib.parse import urlparse

from app.redis.breaker import BreakerUser, CircuitBreaker
from app.redis.resp import RespClient

#: Bound on a probe's PING. Longer than the features' op bounds: a probe that fails keeps the circuit
#: open (everything degraded) for another backoff, so it should not fail merely on a busy machine.
PROBE_TIMEOUT_S = 1.0


def server_of(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL: what one breaker stands for."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return parsed.path
    return f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}"


class RedisBreakers:
    def __init__(self, *, probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._probe_timeout_s = probe_timeout_s
        self._breakers: dict[str, CircuitBreaker] = {}
        self._probes: list[RespClient] = []

    def user(self, url: str, name: str, op_timeout_s: float) -> BreakerUser:
        """``name``'s handle on the breaker of ``url``'s server, with ``name``'s own op bound."""
        server = server_of(url)
        breaker = self._breakers.get(server)
        if breaker is None:
            probe = RespClient(url, timeout_s=self._probe_timeout_s)
            self._probes.append(probe)

            async def ping() -> None:
                reply = await probe.call("PING")
                if reply != b"PONG":
                    raise ConnectionError(f"Redis answered PING with {reply!r}")

            breaker = CircuitBreaker("redis", ping, op_timeout_s=self._probe_timeout_s, target=server)
            self._breakers[server] = breaker
        return breaker.user(name, op_timeout_s)

    def breaker(self, url: str) -> CircuitBreaker | None:
        return self._breakers.get(server_of(url))

    async def aclose(self) -> None:
        for breaker in self._breakers.values():
            await breaker.aclose()
        for probe in self._probes:
            await probe.close()
