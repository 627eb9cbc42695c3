"""Deployment groups on one replica: which member a request gets, and which members rest.

Deployments that share a public ``name`` form a group. A request picks one member by
``models.routing``, with the semantics of LiteLLM Router's strategies of the same names:

- ``simple-shuffle``: random, weighted by ``weight``, as LiteLLM's ``simple_shuffle`` picks (without
  importing LiteLLM, which a relay-only gateway never loads).
- ``least-busy``: fewest calls in flight on this replica (LiteLLM's ``LeastBusyLoggingHandler``
  counts the same thing); ties are broken at random.
- ``latency-based``: lowest average of the last ten times to first token (LiteLLM's
  ``LowestLatencyLoggingHandler``: ``max_latency_list_size = 10``, an unused member counts as 0 so
  that it is tried, a timeout is a 1000 s sample); ties are broken at random.

Cooldowns follow LiteLLM's allowed-fails policy: a member that fails more than ``allowed_fails``
times within a minute rests for ``cooldown_s``; a group of one is never cooled down.

Why not LiteLLM's handlers and cooldown functions themselves: they keep their state in the Router's
DualCache under per-minute keys and take the Router's RoutingContext, and they are driven by
LiteLLM's logging callbacks (pre-call, success, failure), which fire only for calls LiteLLM makes.
The relay makes its own calls; feeding those callbacks would mean building LiteLLM's logging
objects per request, which is the per-request cost the relay exists to avoid. The state here is a
few counters per member in plain attributes.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from app.config.settings import DeploymentSettings, ModelsSettings
from app.domain.errors import GatewayError, UpstreamTimeout

#: LiteLLM's ``RoutingArgs.max_latency_list_size``.
LATENCY_SAMPLES: Final = 10
#: LiteLLM's latency penalty for a timed-out call (``async_log_failure_event``).
TIMEOUT_PENALTY_S: Final = 1000.0
#: The window in which failures are counted against ``allowed_fails`` (LiteLLM: per minute).
FAIL_WINDOW_S: Final = 60.0


class Member:
    """One deployment's live state on this replica."""

    __slots__ = ("_latencies", "cool_until", "dep", "fails", "id", "in_flight", "name")

    def __init__(self, dep: DeploymentSettings) -> None:
        self.dep = dep
        self.id = dep.id
        self.name = dep.name
        self.in_flight = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.fails: deque[float] = deque()
        self.cool_until = 0.0

    def latency(self) -> float:
        samples = self._latencies
        return sum(samples) / len(samples) if samples else 0.0

    def add_latency(self, seconds: float) -> None:
        if seconds >= 0:
            self._latencies.append(seconds)


class Group:
    __slots__ = ("fallbacks", "members", "name", "num_retries")

    def __init__(self, name: str, members: list[Member]) -> None:
        self.name = name
        self.members = members
        # A group's retries and fallbacks are its members' (they normally agree): the most retries
        # any member asks for, and every member's fallbacks in file order.
        self.num_retries = max(m.dep.num_retries for m in members)
        fallbacks: list[str] = []
        for m in members:
            fallbacks += [fb for fb in m.dep.fallbacks if fb not in fallbacks]
        self.fallbacks = tuple(fallbacks)


def _shuffle_picker(rng: random.Random) -> Callable[[Group, list[Member]], Member]:
    def pick(group: Group, usable: list[Member]) -> Member:
        if len(usable) == 1:
            return usable[0]
        if all(m.dep.weight == usable[0].dep.weight for m in usable):
            return rng.choice(usable)
        # LiteLLM's simple-shuffle: a random member, each as likely as its weight.
        return rng.choices(usable, weights=[m.dep.weight for m in usable])[0]

    return pick


class Balancer:
    def __init__(
        self,
        settings: ModelsSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._allowed_fails = settings.allowed_fails
        self._cooldown_s = settings.cooldown_s
        groups: dict[str, list[Member]] = {}
        for dep in settings.deployments:
            groups.setdefault(dep.name, []).append(Member(dep))
        self.groups = {name: Group(name, members) for name, members in groups.items()}
        self.members = {m.id: m for g in self.groups.values() for m in g.members}
        strategies: dict[str, Callable[[Group, list[Member]], Member]] = {
            "simple-shuffle": _shuffle_picker(self._rng),
            "least-busy": self._least_busy,
            "latency-based": self._lowest_latency,
        }
        self._pick = strategies[settings.routing]

    def now(self) -> float:
        return self._clock()

    # -- selection -----------------------------------------------------------------------------

    def usable(self, group: Group, now: float) -> list[Member]:
        """Members not resting now (a group of one always has its member)."""
        if len(group.members) == 1:
            return group.members
        return [m for m in group.members if m.cool_until <= now]

    def pick(self, group: Group, candidates: list[Member]) -> Member:
        return self._pick(group, candidates)

    def _lowest(self, candidates: list[Member], key: Callable[[Member], float]) -> Member:
        best = min(key(m) for m in candidates)
        return self._rng.choice([m for m in candidates if key(m) == best])

    def _least_busy(self, _group: Group, candidates: list[Member]) -> Member:
        return candidates[0] if len(candidates) == 1 else self._lowest(candidates, lambda m: m.in_flight)

    def _lowest_latency(self, _group: Group, candidates: list[Member]) -> Member:
        return candidates[0] if len(candidates) == 1 else self._lowest(candidates, Member.latency)

    # -- bookkeeping ---------------------------------------------------------------------------

    def succeeded(self, member: Member, first_token_s: float) -> None:
        member.add_latency(first_token_s)

    def failed(self, member: Member, error: GatewayError) -> bool:
        """Count a retryable failure; True when it sent the member to rest."""
        if isinstance(error, UpstreamTimeout):
            member.add_latency(TIMEOUT_PENALTY_S)
        now = self._clock()
        fails = member.fails
        fails.append(now)
        while fails and fails[0] <= now - FAIL_WINDOW_S:
            fails.popleft()
        group = self.groups[member.name]
        if self._cooldown_s <= 0 or len(group.members) == 1 or len(fails) <= self._allowed_fails:
            return False
        member.cool_until = now + self._cooldown_s
        fails.clear()  # after its rest the member starts with a clean minute
        return True

    def cooling(self) -> dict[str, list[str]]:
        """Group name -> ids of the members resting now (groups with none are left out)."""
        now = self._clock()
        return {
            g.name: [m.id for m in g.members if m.cool_until > now]
            for g in self.groups.values()
            if len(g.members) > 1 and any(m.cool_until > now for m in g.members)
        }

    def rest_left(self, groups: Iterable[Group]) -> float:
        """Seconds until the first member of ``groups`` comes back from its rest."""
        now = self._clock()
        left = [m.cool_until - now for g in groups for m in g.members if m.cool_until > now]
        return min(left) if left else 0.0
