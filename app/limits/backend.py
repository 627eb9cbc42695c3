"""What a limiter backend does: one atomic admission, one settlement, leases kept alive."""

from __future__ import annotations

from typing import Protocol

#: Why a request was refused: the ``reason`` label of ``chat_rate_limited_total``.
REQUESTS, TOKENS, CONCURRENCY, BUDGET = "requests", "tokens", "concurrency", "budget"


class BackendUnavailable(Exception):
    """The counters cannot be reached: the limiter fails open or closed (``rate_limit.on_backend_error``)."""


class Ask:
    """One admission: the key's limits, this request's cost, and where to count it."""

    __slots__ = (
        "bucket",
        "budget_usd",
        "budget_window_id",
        "concurrent_streams",
        "lease_id",
        "minute",
        "now",
        "requests_per_minute",
        "reserve_tokens",
        "reserve_usd",
        "tokens",
        "tokens_per_minute",
    )

    def __init__(
        self,
        bucket: str,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        concurrent_streams: int,
        budget_usd: float | None,
        budget_window_id: str,
        tokens: int,
        lease_id: str,
        minute: int,
        now: float,
        reserve_usd: float = 0.0,
        reserve_tokens: int = 0,
    ) -> None:
        self.bucket = bucket
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.concurrent_streams = concurrent_streams
        self.budget_usd = budget_usd
        self.budget_window_id = budget_window_id
        self.tokens = tokens
        self.lease_id = lease_id
        self.minute = minute
        self.now = now
        #: Held against the budget (USD) and the minute's tokens while the call runs, under its lease.
        self.reserve_usd = reserve_usd
        self.reserve_tokens = reserve_tokens


class Verdict:
    """The backend's answer: refused for ``reason`` (None = admitted) and the counts after it."""

    __slots__ = ("reason", "requests", "spend", "tokens")

    def __init__(self, reason: str | None, requests: int, tokens: int, spend: float) -> None:
        self.reason = reason
        self.requests = requests
        self.tokens = tokens
        self.spend = spend


class Settlement:
    """What a finished request owes: its lease (and the reservation under it) back, output tokens
    and spend charged."""

    __slots__ = ("bucket", "budget_window_id", "lease_id", "minute", "retried", "spend", "tokens")

    def __init__(
        self, bucket: str, *, lease_id: str | None, minute: int, tokens: int, budget_window_id: str | None, spend: float
    ) -> None:
        self.bucket = bucket
        self.lease_id = lease_id
        self.minute = minute
        self.tokens = tokens
        self.budget_window_id = budget_window_id
        self.spend = spend
        #: Sent again after a failure whose effect is unknown: it charges only if its lease is still
        #: there (the first attempt did not run), so a settlement is never counted twice.
        self.retried = False


class LimitBackend(Protocol):
    async def admit(self, ask: Ask) -> Verdict: ...
    def settle(self, settlement: Settlement) -> None:
        """Charge and release without blocking the caller (a stream's close is synchronous)."""
        ...

    async def health(self) -> bool: ...
    async def close(self) -> None: ...
