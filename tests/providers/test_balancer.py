"""Selection and cooldown bookkeeping of deployment groups (app/providers/balancer.py), on a fake clock."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from app.config.settings import settings_from_dict
from app.domain.errors import ProviderRejected, UpstreamTimeout, UpstreamUnavailable
from app.providers.balancer import Balancer
from app.providers.resilient import retryable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balancer(clock: Clock, *members: dict[str, Any], **models: Any) -> Balancer:
    deployments = [{"name": "g", "litellm_model": "openai/x", **m} for m in members]
    deployments.append({"name": "solo", "litellm_model": "openai/y"})
    settings = settings_from_dict({"models": {"deployments": deployments, **models}}, {})
    return Balancer(settings.models, clock=clock, rng=random.Random(7))


def test_simple_shuffle_follows_weights() -> None:
    b = balancer(Clock(), {"id": "heavy", "weight": 9}, {"id": "light", "weight": 1})
    group = b.groups["g"]
    picks = Counter(b.pick(group, group.members).id for _ in range(2000))
    assert 0.85 < picks["heavy"] / 2000 < 0.95


def test_members_rest_after_more_than_allowed_fails_in_a_minute() -> None:
    clock = Clock()
    b = balancer(clock, {"id": "a"}, {"id": "b"}, allowed_fails=2, cooldown_s=30)
    a = b.members["a"]
    error = UpstreamUnavailable("down")
    assert not b.failed(a, error)
    clock.now += 61  # outside the minute: the first failure no longer counts
    assert not b.failed(a, error)
    assert not b.failed(a, error)
    assert b.failed(a, error)  # the third within a minute
    assert [m.id for m in b.usable(b.groups["g"], clock.now)] == ["b"]
    assert b.cooling() == {"g": ["a"]}
    clock.now += 30
    assert [m.id for m in b.usable(b.groups["g"], clock.now)] == ["a", "b"]
    assert b.cooling() == {}


def test_a_group_of_one_and_cooldown_zero_never_rest() -> None:
    clock = Clock()
    b = balancer(clock, {"id": "a"}, {"id": "b"}, allowed_fails=0, cooldown_s=30)
    solo = b.members["solo-1"]
    assert not any(b.failed(solo, UpstreamUnavailable("down")) for _ in range(5))
    assert b.usable(b.groups["solo"], clock.now) == [solo]
    never = balancer(clock, {"id": "a"}, {"id": "b"}, allowed_fails=0)
    assert not any(never.failed(never.members["a"], UpstreamUnavailable("down")) for _ in range(5))


def test_latency_based_tries_unused_members_and_penalises_timeouts() -> None:
    b = balancer(Clock(), {"id": "a"}, {"id": "b"}, routing="latency-based")
    group = b.groups["g"]
    a, m_b = b.members["a"], b.members["b"]
    b.succeeded(a, 0.05)
    assert b.pick(group, group.members) is m_b  # unused counts as 0 s
    b.succeeded(m_b, 0.02)
    assert b.pick(group, group.members) is m_b
    b.failed(m_b, UpstreamTimeout("slow"))  # LiteLLM's 1000 s penalty
    assert b.pick(group, group.members) is a


def test_least_busy_counts_calls_in_flight() -> None:
    b = balancer(Clock(), {"id": "a"}, {"id": "b"}, routing="least-busy")
    group = b.groups["g"]
    b.members["a"].in_flight = 3
    b.members["b"].in_flight = 1
    assert b.pick(group, group.members).id == "b"


def test_group_retries_and_fallbacks_are_its_members() -> None:
    b = balancer(Clock(), {"id": "a", "num_retries": 1, "fallbacks": ["solo"]}, {"id": "b", "num_retries": 2})
    assert b.groups["g"].num_retries == 2
    assert b.groups["g"].fallbacks == ("solo",)


def test_what_is_retryable() -> None:
    assert retryable(UpstreamUnavailable("5xx or connect"))
    assert retryable(UpstreamTimeout("slow"))
    assert not retryable(ProviderRejected("400"))
