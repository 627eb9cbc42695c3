"""What a call reserves and where its tokens count, without a server: the output cap a request names
(both OpenAI names, times its choices), and the memory backend's minute when a call ends in a minute
that no admission has opened yet."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.domain.chat_request import parse_chat_body
from app.limits.backend import TOKENS, Ask, Settlement
from app.limits.limiter import output_cap
from app.limits.memory import MemoryBackend


def body(**fields: Any) -> Any:
    return parse_chat_body(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}).encode()
    )


@pytest.mark.parametrize(
    ("fields", "cap"),
    [
        ({}, 0),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 1, "max_tokens": 100_000}, 100_000),  # a provider may honour either
        ({"max_completion_tokens": 500, "max_tokens": 10}, 500),
        ({"max_tokens": 4000, "n": 128}, 512_000),  # every choice may run to the cap
        ({"max_tokens": 50, "n": 1}, 50),
    ],
)
def test_the_output_cap_a_request_reserves(fields: dict[str, Any], cap: int) -> None:
    assert output_cap(body(**fields)) == cap


def ask(minute: int, tokens: int, lease: str = "") -> Ask:
    return Ask(
        "k",
        requests_per_minute=0,
        tokens_per_minute=100,
        concurrent_streams=0,
        budget_usd=None,
        budget_window_id="total",
        tokens=tokens,
        lease_id=lease,
        minute=minute,
        now=0.0,
    )


def test_tokens_of_a_call_ended_in_a_new_minute_count_in_it() -> None:
    backend = MemoryBackend()
    assert backend.admit_now(ask(100, 10, "a")).reason is None
    # The call ends in minute 101, before anything was admitted in it: its 95 output tokens count there.
    backend.settle(Settlement("k", lease_id="a", minute=101, tokens=95, budget_window_id=None, spend=0.0))
    assert backend.admit_now(ask(101, 10)).reason == TOKENS  # 95 + 10 > 100
    assert backend.admit_now(ask(102, 10)).reason is None  # and only there
    # A settlement of a minute already past counts nowhere (the minute's window is gone).
    backend.settle(Settlement("k", lease_id=None, minute=101, tokens=95, budget_window_id=None, spend=0.0))
    assert backend.admit_now(ask(102, 80)).reason is None
