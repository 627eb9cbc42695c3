"""Counters in this process: exact for one replica, and no I/O on the hot path."""

from __future__ import annotations

from collections import Counter

from app.limits.backend import BUDGET, CONCURRENCY, REQUESTS, TOKENS, Ask, Settlement, Verdict


class MemoryBackend:
    def __init__(self) -> None:
        self._minute = -1
        # Per bucket, for the current minute only: older minutes are dropped when one starts.
        self._requests: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()
        self._spend: dict[tuple[str, str], float] = {}
        self._leases: set[str] = set()

    def _roll(self, minute: int) -> None:
        if minute != self._minute:
            self._minute = minute
            self._requests.clear()
            self._tokens.clear()

    async def admit(self, ask: Ask) -> Verdict:
        return self.admit_now(ask)

    def admit_now(self, ask: Ask) -> Verdict:
        self._roll(ask.minute)
        bucket = ask.bucket
        requests, tokens = self._requests[bucket], self._tokens[bucket]
        spend = self._spend.get((bucket, ask.budget_window_id), 0.0)
        reason = None
        if ask.budget_usd is not None and spend >= ask.budget_usd:
            reason = BUDGET
        elif ask.requests_per_minute and requests >= ask.requests_per_minute:
            reason = REQUESTS
        elif ask.tokens_per_minute and tokens + ask.tokens > ask.tokens_per_minute:
            reason = TOKENS
        elif ask.concurrent_streams and self._streams[bucket] >= ask.concurrent_streams:
            reason = CONCURRENCY
        if reason is None:
            requests = self._requests[bucket] = requests + 1
            tokens = self._tokens[bucket] = tokens + ask.tokens
            if ask.concurrent_streams:
                self._streams[bucket] += 1
                self._leases.add(ask.lease_id)
        return Verdict(reason, requests, tokens, spend)

    def settle(self, settlement: Settlement) -> None:
        bucket = settlement.bucket
        if settlement.lease_id is not None and settlement.lease_id in self._leases:
            self._leases.discard(settlement.lease_id)
            self._streams[bucket] -= 1
        if settlement.tokens and settlement.minute == self._minute:
            self._tokens[bucket] += settlement.tokens
        if settlement.budget_window_id is not None and settlement.spend:
            key = (bucket, settlement.budget_window_id)
            self._spend[key] = self._spend.get(key, 0.0) + settlement.spend

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None
