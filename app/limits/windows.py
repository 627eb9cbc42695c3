"""Time windows the limits count in: the current minute (requests, tokens) and a budget's window."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from app.access.policy import BudgetWindow


def minute_of(now: float) -> int:
    return int(now // 60)


def seconds_to_next_minute(now: float) -> int:
    """Whole seconds until the minute's counters start over (at least 1: Retry-After is an integer)."""
    return max(1, math.ceil(60 - now % 60))


def budget_window_id(window: BudgetWindow, now: float) -> str:
    if window == "total":
        return "total"
    day = datetime.fromtimestamp(now, UTC)
    return day.strftime("%Y%m%d") if window == "day" else day.strftime("%Y%m")


def budget_resets_in(window: BudgetWindow, now: float) -> int | None:
    """Seconds until the budget's window starts over; None for ``total``, which never does."""
    if window == "total":
        return None
    current = datetime.fromtimestamp(now, UTC)
    if window == "day":
        start = current.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start.timestamp() + 86_400
    else:
        year, month = (current.year + 1, 1) if current.month == 12 else (current.year, current.month + 1)
        end = datetime(year, month, 1, tzinfo=UTC).timestamp()
    return max(1, math.ceil(end - now))
