"""The model catalogue: one immutable snapshot, rebuilt at most every ``refresh_s`` by one caller.

Concurrent callers during a refresh share it (single-flight); a failed refresh keeps serving the
last good snapshot and is logged and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
import structlog

from app.aio.shared_attempt import shared_attempt
from app.catalogue.classify import ModelInfo, capabilities_of, categories_of
from app.config.settings import DeploymentSettings, ModelInfoOverride

logger = structlog.get_logger("chat.catalogue")

MetadataLookup = Callable[[str], Mapping[str, Any] | None]
ProviderLookup = Callable[[str], str | None]
#: USD per million input and output tokens (None: unknown, charged as free).
Prices = tuple[float | None, float | None]


class Snapshot(msgspec.Struct, frozen=True):
    models: tuple[ModelInfo, ...]
    by_id: dict[str, ModelInfo]
    owned_by: dict[str, str]
    names: frozenset[str]
    built_at: float  # epoch seconds, the OpenAI list's `created`
    #: Per deployment id: what a call it answers costs (its own prices, else its group's).
    member_prices: dict[str, Prices] = {}
    #: Per public name: the dearest of its members' prices, which admission reserves at.
    dearest: dict[str, Prices] = {}
    #: Per deployment id: USD a web search the provider runs for a call costs (LiteLLM's metadata).
    search_fees: dict[str, float] = {}
    #: Per public name: the dearest of its members' search fees, which admission reserves at.
    dearest_search_fees: dict[str, float] = {}


def _per_mtok(cost_per_token: Any) -> float | None:
    return round(float(cost_per_token) * 1_000_000, 6) if isinstance(cost_per_token, int | float) else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def prices_of(dep: DeploymentSettings, metadata: Mapping[str, Any] | None) -> Prices:
    """A deployment's prices: its own ``info`` overrides, else LiteLLM's metadata for its model."""
    meta = metadata or {}
    o = dep.info
    cost_in = (
        o.input_cost_per_mtok if o.input_cost_per_mtok is not None else _per_mtok(meta.get("input_cost_per_token"))
    )
    cost_out = (
        o.output_cost_per_mtok if o.output_cost_per_mtok is not None else _per_mtok(meta.get("output_cost_per_token"))
    )
    return cost_in, cost_out


def search_fee_of(metadata: Mapping[str, Any] | None) -> float | None:
    """USD per web search the provider runs (Anthropic's web search tool), from LiteLLM's metadata:
    its medium context size's price where it lists sizes (Anthropic's is one price for all)."""
    fee = (metadata or {}).get("search_context_cost_per_query")
    if isinstance(fee, dict):
        fee = fee.get("search_context_size_medium")
    return float(fee) if isinstance(fee, int | float) and fee >= 0 else None


def model_info(dep: DeploymentSettings, metadata: Mapping[str, Any] | None, provider: str | None) -> ModelInfo:
    meta = metadata or {}
    o = dep.info
    mode = o.mode if o.mode is not None else meta.get("mode")
    max_in = o.max_input_tokens if o.max_input_tokens is not None else _int_or_none(meta.get("max_input_tokens"))
    max_out = o.max_output_tokens if o.max_output_tokens is not None else _int_or_none(meta.get("max_output_tokens"))
    cost_in, cost_out = prices_of(dep, meta)
    caps = sorted(set(o.capabilities)) if o.capabilities is not None else capabilities_of(meta)
    return ModelInfo(
        id=dep.name,
        provider=provider,
        mode=mode,
        max_input_tokens=max_in,
        max_output_tokens=max_out,
        input_cost_per_mtok=cost_in,
        output_cost_per_mtok=cost_out,
        capabilities=caps,
        categories=categories_of(provider, mode, caps, max_in, cost_in),
    )


def merged_info(group: list[DeploymentSettings]) -> ModelInfoOverride:
    """A group's configured metadata: per field, the first member (in file order) that sets it."""
    values: dict[str, Any] = {}
    for dep in group:
        for name in ModelInfoOverride.__struct_fields__:
            if values.get(name) is None:
                values[name] = getattr(dep.info, name)
    return ModelInfoOverride(**values)


def build_snapshot(
    deployments: list[DeploymentSettings], metadata: MetadataLookup, provider_of: ProviderLookup
) -> Snapshot:
    groups: dict[str, list[DeploymentSettings]] = {}
    for dep in deployments:
        groups.setdefault(dep.name, []).append(dep)
    models = []
    owned_by = {}
    member_prices: dict[str, Prices] = {}
    dearest: dict[str, Prices] = {}
    search_fees: dict[str, float] = {}
    dearest_search_fees: dict[str, float] = {}
    for name, group in groups.items():
        # One entry per public name: LiteLLM's metadata of the first member it knows, under the
        # group's merged overrides.
        lead = next((d for d in group if metadata(d.litellm_model)), group[0])
        provider = provider_of(lead.litellm_model)
        dep = msgspec.structs.replace(lead, info=merged_info(group))
        info = model_info(dep, metadata(lead.litellm_model), provider)
        models.append(msgspec.structs.replace(info, deployments=len(group)))
        owned_by[name] = dep.info.owned_by or provider or "unknown"
        # A group may mix providers and prices (a cheap model beside a dear one): each member is
        # charged at its own, and admission reserves at the dearest, whichever member answers.
        listed = (info.input_cost_per_mtok, info.output_cost_per_mtok)
        for member in group:
            member_metadata = metadata(member.litellm_model)
            if (fee := search_fee_of(member_metadata)) is not None:
                search_fees[member.id] = fee
            own_in, own_out = prices_of(member, member_metadata)
            member_prices[member.id] = (
                own_in if own_in is not None else listed[0],
                own_out if own_out is not None else listed[1],
            )
        if fees := [search_fees[member.id] for member in group if member.id in search_fees]:
            dearest_search_fees[name] = max(fees)
        members = [member_prices[member.id] for member in group]
        dearest[name] = (_most(p[0] for p in members), _most(p[1] for p in members))
    return Snapshot(
        models=tuple(models),
        by_id={m.id: m for m in models},
        owned_by=owned_by,
        names=frozenset(m.id for m in models),
        built_at=time.time(),
        member_prices=member_prices,
        dearest=dearest,
        search_fees=search_fees,
        dearest_search_fees=dearest_search_fees,
    )


def _most(prices: Iterable[float | None]) -> float | None:
    known = [p for p in prices if p is not None]
    return max(known) if known else None


class Catalogue:
    def __init__(
        self,
        build: Callable[[], Awaitable[Snapshot]],
        refresh_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._refresh_s = refresh_s
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._fresh_until = 0.0
        self._inflight: asyncio.Future[Snapshot] | None = None
        self.builds = 0
        self.failures = 0

    def current(self) -> Snapshot | None:
        """The last good snapshot, without waiting; starts a background refresh when it is stale."""
        if self._snapshot is not None and self._clock() >= self._fresh_until and self._inflight is None:
            self._start_refresh()
        return self._snapshot

    async def get(self) -> Snapshot:
        if self._snapshot is not None and self._clock() < self._fresh_until:
            return self._snapshot
        future = self._inflight or self._start_refresh()
        if self._snapshot is not None:
            # Stale but usable: never make a caller wait for a refresh that may fail.
            return self._snapshot
        return await asyncio.shield(future)

    def _start_refresh(self) -> asyncio.Future[Snapshot]:
        # The first build's callers may all give up before it fails (nothing to fall back on then).
        self._inflight = shared_attempt(self._refresh())
        return self._inflight

    async def _refresh(self) -> Snapshot:
        try:
            self.builds += 1
            snapshot = await self._build()
        except Exception as exc:
            self.failures += 1
            # Try again after a short pause, not on every request, and not only after a full period.
            self._fresh_until = self._clock() + min(self._refresh_s, 5.0)
            logger.error("catalogue_refresh_failed", error=f"{type(exc).__name__}: {exc}", failures=self.failures)
            if self._snapshot is None:
                raise
            return self._snapshot
        finally:
            self._inflight = None
        self._snapshot = snapshot
        self._fresh_until = self._clock() + self._refresh_s
        return snapshot
