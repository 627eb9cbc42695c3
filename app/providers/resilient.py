"""Retries, cooldowns and fallbacks for a public model, in front of both provider paths.

A call for a public model name picks a member of its group (``Balancer``) and calls it through the
per-deployment provider (relay fast path or full LiteLLM path alike). A retryable failure before
the first chunk (connect error, 429, 5xx, timeout) is retried up to ``num_retries`` times on
another member -- the same member only when no other is left, after its ``Retry-After`` when that
is short; then each of the group's ``fallbacks`` is tried in order, with its own retries. Client
errors (400, context too long, the provider's 401/403/404) end the call at once.

The commit point is the first chunk: a stream source (``ResilientStream``) does all of that inside
its first ``__anext__``, which ChatStream's status window waits on; from the first chunk on it hands
out the chosen upstream's own ``__anext__`` awaitables, so a committed stream costs no extra frame
per chunk, and a later failure reaches the client as an in-band error, never as a switch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from app.aio.deadline import Deadline
from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion
from app.domain.errors import GatewayError, RateLimited, UpstreamOverloaded, UpstreamTimeout, UpstreamUnavailable
from app.providers.balancer import Balancer, Group, Member
from app.providers.base import Provider, PushSink, PushSource, can_push, close_quietly

OK: Final = "ok"
ERROR: Final = "error"
RETRIED: Final = "retried"
FALLBACK: Final = "fallback"

#: The longest provider ``Retry-After`` a retry waits out before the first byte; a longer one
#: means that member is not retried within this request (the client may retry itself).
SHORT_RETRY_AFTER_S: Final = 5.0

T = TypeVar("T")


def retryable(error: GatewayError) -> bool:
    """Failures another attempt may cure: the provider unreachable, overloaded, rate-limited or slow."""
    return isinstance(error, UpstreamUnavailable | UpstreamOverloaded | UpstreamTimeout | RateLimited)


class AttemptObserver(Protocol):
    def upstream_attempt(self, model: str, deployment: str, outcome: str) -> None: ...


def _any_model(model: str) -> bool:
    return True


class Trail:
    """What a call's attempts came to (for the access log, pricing and the in-flight count's
    release), and which public models the caller lets it reach."""

    __slots__ = ("_balancer", "_member", "allows", "attempts", "deployment", "model")

    def __init__(self, allows: Callable[[str], bool] = _any_model) -> None:
        self.attempts = 0
        self.deployment: str | None = None  # the id of the deployment that answered
        self.model: str | None = None  # the public name of the group that answered (a fallback's)
        #: The caller's allow-list: a fallback it does not allow is never tried for it.
        self.allows = allows
        self._member: Member | None = None
        self._balancer: Balancer | None = None

    def _answered(self, member: Member) -> None:
        self.deployment = member.id
        self.model = member.dep.name
        self._member = member

    def release(self) -> None:
        """The answering call is over (idempotent): least-busy stops counting it."""
        member, self._member = self._member, None
        if member is not None:
            member.in_flight -= 1

    def log_fields(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "attempts": self.attempts}


class Resilient:
    def __init__(
        self,
        balancer: Balancer,
        provider: Provider,
        *,
        observer: AttemptObserver | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.balancer = balancer
        self._provider = provider
        self._observer = observer
        self._sleep = sleep

    def stream(self, request: ChatCompletionInput, model: str, trail: Trail) -> ResilientStream:
        return ResilientStream(self, request, model, trail)

    async def complete(self, request: ChatCompletionInput, model: str, trail: Trail) -> Completion:
        provider = self._provider
        loop = asyncio.get_running_loop()  # once: each ask is a system call on Python 3.11 (Deadline)

        async def attempt(member: Member) -> Completion:
            try:
                async with Deadline(loop, member.dep.timeout_s):
                    return await provider.complete(request, member.id)
            except TimeoutError as exc:
                raise UpstreamTimeout("The provider did not complete the call in time.") from exc

        try:
            return await self.run(model, trail, attempt)
        finally:
            trail.release()  # a whole completion holds its member only while it runs

    def fallbacks(self, model: str, allows: Callable[[str], bool]) -> list[str]:
        """``model``'s fallbacks that are configured and that the caller's allow-list lets it reach."""
        groups = self.balancer.groups
        group = groups.get(model)
        return [name for name in group.fallbacks if name in groups and allows(name)] if group is not None else []

    async def run(self, model: str, trail: Trail, attempt: Callable[[Member], Awaitable[T]]) -> T:
        """``attempt`` on members of ``model``'s group, then of its fallbacks, until one answers."""
        balancer = self.balancer
        group = balancer.groups[model]
        plan = [group, *(balancer.groups[name] for name in self.fallbacks(model, trail.allows))]
        last_error: GatewayError | None = None
        failed: tuple[str, str] | None = None  # the failed attempt whose outcome waits on what follows
        for step in plan:
            not_before: dict[str, float] = {}  # member id -> when it may be tried again in this request
            for _ in range(1 + step.num_retries):
                member, wait = self._choose(step, not_before)
                if member is None:
                    break
                if failed is not None:
                    self._count(*failed, RETRIED if failed[0] == step.name else FALLBACK)
                    failed = None
                if wait > 0:
                    await self._sleep(wait)
                trail.attempts += 1
                member.in_flight += 1
                started = time.perf_counter()
                try:
                    result = await attempt(member)
                except GatewayError as exc:
                    member.in_flight -= 1
                    if not retryable(exc):
                        self._count(step.name, member.id, ERROR)
                        raise
                    balancer.failed(member, exc)
                    last_error, failed = exc, (step.name, member.id)
                    after = exc.retry_after if isinstance(exc, RateLimited) else None
                    if after is None:
                        not_before[member.id] = balancer.now()
                    elif after <= SHORT_RETRY_AFTER_S:
                        not_before[member.id] = balancer.now() + after
                    else:
                        not_before[member.id] = math.inf
                    continue
                except BaseException:
                    member.in_flight -= 1  # cancelled (the client left, the stream's deadline)
                    raise
                balancer.succeeded(member, time.perf_counter() - started)
                self._count(step.name, member.id, OK)
                trail._answered(member)
                return result
        if failed is not None:
            self._count(*failed, ERROR)
        if last_error is not None:
            raise last_error
        left = balancer.rest_left(plan)
        raise UpstreamOverloaded(
            f"Every deployment of `{model}` is resting after failures; try again in {math.ceil(left)} s.",
            retry_after=max(1, math.ceil(left)),
        )

    def _choose(self, group: Group, not_before: dict[str, float]) -> tuple[Member | None, float]:
        """The next member to try and how long to wait first; None when the group has no one left."""
        now = self.balancer.now()
        usable = self.balancer.usable(group, now)
        fresh = [m for m in usable if m.id not in not_before]
        if fresh:
            return self.balancer.pick(group, fresh), 0.0
        # Everyone usable has failed in this request: retry the one free soonest, if that is soon.
        tried = [m for m in usable if not_before[m.id] - now <= SHORT_RETRY_AFTER_S]
        if not tried:
            return None, 0.0
        member = min(tried, key=lambda m: not_before[m.id])
        return member, max(0.0, not_before[member.id] - now)

    def _count(self, model: str, deployment: str, outcome: str) -> None:
        if self._observer is not None:
            self._observer.upstream_attempt(model, deployment, outcome)


class ResilientStream:
    """A stream source whose first ``__anext__`` runs the attempts; after it, the chosen upstream's own."""

    __slots__ = ("_inner", "_inner_next", "_model", "_owner", "_pushable", "_request", "_trail")

    @property
    def more(self) -> bool:
        """The chosen upstream's ``more`` (``PushSource``): its next chunk has already arrived."""
        pushable = self._pushable
        return pushable is not None and pushable.more

    def __init__(self, owner: Resilient, request: ChatCompletionInput, model: str, trail: Trail) -> None:
        self._owner = owner
        self._request = request
        self._model = model
        self._trail = trail
        self._inner: AsyncIterator[Chunk] | None = None
        self._inner_next: Callable[[], Awaitable[Chunk]] | None = None
        self._pushable: PushSource | None = None  # the chosen upstream, when it can push

    def __aiter__(self) -> ResilientStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        inner_next = self._inner_next
        if inner_next is not None:
            return inner_next()  # committed: the upstream's own awaitable, no frame of ours per chunk
        return self._open()

    async def _open(self) -> Chunk:
        provider = self._owner._provider
        request = self._request
        loop = asyncio.get_running_loop()  # once: each ask is a system call on Python 3.11 (Deadline)

        async def attempt(member: Member) -> Chunk:
            upstream = provider.stream(request, member.id)
            try:
                async with Deadline(loop, member.dep.timeout_s):
                    first = await anext(upstream)
            except StopAsyncIteration:
                # An empty stream still answered: hand on its end.
                self._commit(upstream)
                raise
            except TimeoutError as exc:
                await close_quietly(upstream)
                raise UpstreamTimeout("The provider sent no first chunk in time.") from exc
            except BaseException:
                await close_quietly(upstream)
                raise
            self._commit(upstream)
            return first

        try:
            return await self._owner.run(self._model, self._trail, attempt)
        except StopAsyncIteration:
            raise
        except BaseException:
            self._trail.release()
            raise

    def push(self, sink: PushSink) -> bool:
        """The chosen upstream's ``push`` (``PushSource``), once one was chosen and if it can."""
        return self._pushable is not None and self._pushable.push(sink)

    def resume(self) -> None:
        if self._pushable is not None:
            self._pushable.resume()

    def _commit(self, upstream: AsyncIterator[Chunk]) -> None:
        self._inner = upstream
        self._inner_next = upstream.__anext__
        self._pushable = upstream if can_push(upstream) else None

    async def aclose(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await close_quietly(inner)
