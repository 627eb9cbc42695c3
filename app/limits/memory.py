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
        # The calls in flight: lease id -> (bucket, reserved USD, reserved tokens), and their sums.
        self._leases: dict[str, tuple[str, float, int]] = {}
        self._reserved_usd: dict[str, float] = {}
        self._reserved_tokens: Counter[str] = Counter()

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
        spend = self._spend.get((bucket, ask.budget_window_id), 0.0) + self._reserved_usd.get(bucket, 0.0)
        held = tokens + self._reserved_tokens[bucket]
        reason = None
        if ask.budget_usd is not None and spend >= ask.budget_usd:
            reason = BUDGET
        elif ask.requests_per_minute and requests >= ask.requests_per_minute:
            reason = REQUESTS
        elif ask.tokens_per_minute and held + ask.tokens > ask.tokens_per_minute:
            reason = TOKENS
        elif ask.concurrent_streams and self._streams[bucket] >= ask.concurrent_streams:
            reason = CONCURRENCY
        if reason is None:
            requests = self._requests[bucket] = requests + 1
            tokens = self._tokens[bucket] = tokens + ask.tokens
            held += ask.tokens
            if ask.lease_id:
                self._streams[bucket] += 1
                self._leases[ask.lease_id] = (bucket, ask.reserve_usd, ask.reserve_tokens)
                if ask.reserve_usd:
                    self._reserved_usd[bucket] = self._reserved_usd.get(bucket, 0.0) + ask.reserve_usd
                if ask.reserve_tokens:
                    self._reserved_tokens[bucket] += ask.reserve_tokens
        return Verdict(reason, requests, held, spend)

    def settle(self, settlement: Settlement) -> None:
        bucket = settlement.bucket
        lease = self._leases.pop(settlement.lease_id, None) if settlement.lease_id is not None else None
        if lease is not None:
            self._streams[bucket] -= 1
            _, usd, tokens = lease
            if usd:
                left = self._reserved_usd[bucket] - usd
                self._reserved_usd[bucket] = left if left > 1e-12 else 0.0
            if tokens:
                self._reserved_tokens[bucket] -= tokens
        if settlement.tokens:
            # A call that ends in a minute no admission has opened yet opens it: its tokens count
            # there (as Redis's key for that minute does), not nowhere.
            if settlement.minute > self._minute:
                self._roll(settlement.minute)
            if settlement.minute == self._minute:
                self._tokens[bucket] += settlement.tokens
        if settlement.budget_window_id is not None and settlement.spend:
            key = (bucket, settlement.budget_window_id)
            self._spend[key] = self._spend.get(key, 0.0) + settlement.spend

    def in_flight(self, bucket: str) -> tuple[int, float, int]:
        """The bucket's calls in flight and what they hold: (leases, reserved USD, reserved tokens)."""
        return self._streams[bucket], self._reserved_usd.get(bucket, 0.0), self._reserved_tokens[bucket]

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None
