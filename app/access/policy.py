"""What one gateway key may do: its models (allow-list with ``*`` globs) and its limits.

Built once at start-up from ``[[keys]]`` and ``[rate_limit]``'s defaults; a request only reads it.
"""

from __future__ import annotations

import fnmatch
import re
from functools import cached_property
from typing import Literal

BudgetWindow = Literal["day", "month", "total"]


class KeyPolicy:
    def __init__(
        self,
        name: str,
        *,
        models: tuple[str, ...] | None = None,
        requests_per_minute: int = 0,
        tokens_per_minute: int = 0,
        concurrent_streams: int = 0,
        budget_usd: float | None = None,
        budget_window: BudgetWindow = "month",
    ) -> None:
        #: The configured name ("default" for server.api_keys_env keys): the only thing metrics and logs see.
        self.name = name
        self.models = models
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.concurrent_streams = concurrent_streams
        self.budget_usd = budget_usd
        self.budget_window = budget_window

    @property
    def limited(self) -> bool:
        """Anything to count for this key (requests, tokens, streams or spend)."""
        return bool(
            self.requests_per_minute or self.tokens_per_minute or self.concurrent_streams or self.budget_usd is not None
        )

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        if self.models is None:
            return None
        # One compiled alternation: a request pays one match, however long the allow-list.
        return re.compile("|".join(fnmatch.translate(m) for m in self.models) or r"(?!)")

    def allows(self, model: str) -> bool:
        pattern = self._pattern
        return pattern is None or pattern.match(model) is not None


UNLIMITED = KeyPolicy("default")
