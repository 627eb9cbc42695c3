"""Admission for one request of one key, and its settlement when the request ends.

``Limiter.admit`` runs before a call reaches the provider: one backend call (memory, or one Redis
round trip) checks and counts the key's requests, estimated input tokens, concurrent calls and
budget at once, and reserves what the call may cost: its estimated input tokens, plus
``max_tokens`` x the output price when the request names one, at the dearest price among the
models the call may reach for this key. A call is admitted only while spend plus the reservations
in flight is under the budget (and the minute's tokens plus reserved tokens under the TPM), so
concurrent calls cannot overspend by more than the one admitted last.

The ``Admission`` it returns is settled exactly once when the request ends (a JSON call's end, a
stream's close): the lease and its reservation go back, output tokens are charged to the minute,
spend to the budget window, priced by the deployment that answered. When the provider's usage
never arrives (the client left, a cancel, a drain, an upstream error mid-stream, a provider that
sends none) the call is charged from an estimate: input tokens as estimated at admission, output
tokens as counted from what the provider had sent. A stream that began within budget always runs
to its end; the next request is the one refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import msgspec
import structlog

from app.access.keys import Caller
from app.access.policy import KeyPolicy
from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Usage
from app.domain.errors import BudgetExceeded, RateLimited
from app.domain.ids import random_hex
from app.limits.backend import BUDGET, Ask, BackendUnavailable, LimitBackend, Settlement, Verdict
from app.limits.windows import budget_resets_in, budget_window_id, minute_of, seconds_to_next_minute

logger = structlog.get_logger("chat.limits")


class PriceLookup(Protocol):
    """(input, output) USD per million tokens; None when unknown (then no spend)."""

    def reserved(self, model: str) -> tuple[float | None, float | None]:
        """The dearest a call to the public name ``model`` can be charged at (any member of its group)."""
        ...

    def charged(self, model: str, deployment: str | None) -> tuple[float | None, float | None]:
        """What a call to ``model`` answered by the deployment id ``deployment`` costs (None: none answered)."""
        ...

    def search_fee(self, deployment: str | None) -> float | None:
        """USD a web search run by the provider of ``deployment`` costs (None: unpriced)."""
        ...

    def dearest_search_fee(self, model: str) -> float | None:
        """The most a web search can cost a call to the public name ``model`` (any member of its group)."""
        ...


_encode = msgspec.json.Encoder().encode
#: While the backend is down, how often a request tries it again (the others skip it).
PROBE_S = 0.5


#: What a provider reads as the prompt besides the messages: tool definitions (an agent's are 50-200 KB
#: of schemas, billed as input) and a structured answer's schema.
_PROMPT_FIELDS = ("tools", "functions", "response_format")


def estimate_tokens(request: ChatCompletionInput) -> int:
    """Input tokens as a limiter may count them before the provider does: about four bytes a token
    of the messages and of the other fields the prompt is made of. Counted whole, so that neither
    admission (``tokens_per_minute``, a budget's reservation) nor the charge of a call whose usage
    never arrives can be walked around by moving the prompt's bulk out of ``messages``."""
    body = request.body
    size = len(_encode(body.get("messages")))
    for name in _PROMPT_FIELDS:
        if name in body:
            size += len(_encode(body[name]))
    return size // 4 + 1


#: The most a client's count (an output cap, a search cap) is read as: its integers may have any size,
#: and past this one a reservation is past any budget already; never a number too large to price.
MAX_COUNT = 1_000_000_000


def _count(value: object) -> int:
    return min(value, MAX_COUNT) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def output_cap(request: ChatCompletionInput) -> int:
    """The output tokens a request allows itself, 0 if it names no cap: the larger of
    ``max_completion_tokens`` and ``max_tokens`` (a provider may honour either), for each of its ``n``
    choices."""
    body = request.body
    cap = max(_count(body.get("max_completion_tokens")), _count(body.get("max_tokens")))
    return cap * max(1, _count(body.get("n")))


#: Searches reserved for a web search tool that names no ``max_uses`` (the provider sets no bound of
#: its own): LiteLLM's most for OpenAI's ``web_search_options`` (``search_context_size`` high).
UNBOUNDED_SEARCHES = 10
#: A client's ``max_uses`` is its own number, unchecked by the request's schema: past this it is read
#: as this (a reservation past any budget), never as an integer too large to price.
MAX_RESERVED_SEARCHES = 10_000
#: OpenAI's ``web_search_options.search_context_size`` as LiteLLM maps it to Anthropic's ``max_uses``.
_SEARCHES_BY_SIZE = {"low": 1, "medium": 5, "high": 10}


def search_cap(request: ChatCompletionInput) -> int:
    """The web searches a request lets the provider run: each web search tool's ``max_uses`` (in the
    client's own body for a Messages request), or OpenAI's ``web_search_options``. A Responses
    request's ``client_body`` holds its input only: its built-in search tools are never sent (0)."""
    body = request.client_body if request.client_body is not None else request.body
    cap = 0
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind.startswith("web_search"):
            cap += _count(tool.get("max_uses")) or UNBOUNDED_SEARCHES
    options = body.get("web_search_options")
    if isinstance(options, dict):
        cap += _SEARCHES_BY_SIZE.get(str(options.get("search_context_size")), UNBOUNDED_SEARCHES)
    return min(cap, MAX_RESERVED_SEARCHES)


class KeyRateLimited(RateLimited):
    def __init__(self, message: str, *, retry_after: int, rate_headers: dict[str, str]) -> None:
        super().__init__(message, retry_after=retry_after)
        self.rate_headers = rate_headers

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.rate_headers}


class KeyBudgetExceeded(BudgetExceeded):
    def __init__(self, message: str, *, retry_after: int | None, rate_headers: dict[str, str]) -> None:
        super().__init__(message, retry_after=retry_after)
        self.rate_headers = rate_headers

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.rate_headers}


class Admission:
    """One admitted request: its rate-limit headers now, its settlement once at its end."""

    __slots__ = ("_input", "_limiter", "_request", "_settled", "caller", "headers", "lease_id")

    def __init__(
        self,
        limiter: Limiter,
        caller: Caller,
        lease_id: str | None,
        headers: dict[str, str],
        request: ChatCompletionInput | None = None,
        input_tokens: int | None = None,
    ) -> None:
        self._limiter = limiter
        self.caller = caller
        self.lease_id = lease_id
        #: OpenAI's x-ratelimit-* headers for this response (empty for a key without limits).
        self.headers = headers
        self._settled = False
        self._request = request
        self._input = input_tokens

    @property
    def input_tokens(self) -> int:
        """The request's input tokens as estimated at admission (0 for a resume's lease)."""
        if self._input is None:
            # Estimated only when needed: a key without limits whose calls report usage never pays it.
            self._input = estimate_tokens(self._request) if self._request is not None else 0
        return self._input

    def settle(
        self,
        model: str,
        usage: Usage | None,
        *,
        from_cache: bool = False,
        answered_by: str | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Release the lease and its reservation and charge the call; later calls do nothing.

        ``usage`` is the provider's; without it, ``output_tokens`` (what was counted of the
        provider's output, None when nothing was asked of a provider) makes the charge an estimate.
        ``answered_by`` is the id of the deployment that answered (a group member's, a fallback's):
        the call is priced at its prices."""
        if self._settled:
            return
        self._settled = True
        if from_cache:
            usage = None
        elif usage is None and output_tokens is not None and self._request is not None:
            usage = Usage(prompt_tokens=self.input_tokens, completion_tokens=output_tokens)
            self._limiter._estimated(model)
        self._limiter._settle(self, model, usage, answered_by)


class Limiter:
    def __init__(
        self,
        backend: LimitBackend,
        *,
        on_backend_error: Literal["open", "closed"] = "open",
        prices: PriceLookup | None = None,
        observer: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._fail_open = on_backend_error == "open"
        self._prices = prices
        self._observer = observer  # Metrics: rate_limited(key, reason), spent(key, model, usd), limiter_outage()
        self._clock = clock
        self._down = False
        self._probe_at = 0.0  # while down, the backend is tried again from this time on
        self.mode = on_backend_error

    async def admit(self, caller: Caller, request: ChatCompletionInput, *, reach: Iterable[str] = ()) -> Admission:
        """``reach``: the public models the call may be answered by (its own, its allowed
        fallbacks); the reservation is priced at the dearest of them."""
        return await self._admit(caller, request, reach)

    async def lease(self, caller: Caller) -> Admission:
        """A concurrency lease alone: a resumed stream's reader holds a stream slot like the stream
        itself (its tokens and spend were charged when the stream was admitted)."""
        return await self._admit(caller, None, ())

    def _reservation(self, request: ChatCompletionInput, reach: Iterable[str], input_tokens: int) -> float:
        """USD a call may cost at most as far as admission can tell, at its dearest reachable prices."""
        if self._prices is None:
            return 0.0
        cost_in = cost_out = 0.0
        models = (request.model, *reach)
        for model in models:
            price_in, price_out = self._prices.reserved(model)
            cost_in, cost_out = max(cost_in, price_in or 0.0), max(cost_out, price_out or 0.0)
        usd = (input_tokens * cost_in + output_cap(request) * cost_out) / 1e6
        if searches := search_cap(request):
            usd += searches * max((self._prices.dearest_search_fee(model) or 0.0 for model in models), default=0.0)
        return usd

    async def _admit(self, caller: Caller, request: ChatCompletionInput | None, reach: Iterable[str]) -> Admission:
        policy = caller.policy
        if not policy.limited or (request is None and not policy.concurrent_streams):
            return Admission(self, caller, None, {}, request)
        now = self._clock()
        # Every limited call holds a lease while it runs: its concurrency slot and its reservation.
        lease_id = random_hex(8)
        whole = request is not None
        input_tokens = estimate_tokens(request) if request is not None else 0
        budgeted = whole and policy.budget_usd is not None
        ask = Ask(
            caller.bucket,
            requests_per_minute=policy.requests_per_minute if whole else 0,
            tokens_per_minute=policy.tokens_per_minute if whole else 0,
            concurrent_streams=policy.concurrent_streams,
            budget_usd=policy.budget_usd if whole else None,
            budget_window_id=budget_window_id(policy.budget_window, now)
            if whole and policy.budget_usd is not None
            else "",
            tokens=input_tokens if policy.tokens_per_minute else 0,
            lease_id=lease_id,
            minute=minute_of(now),
            now=now,
            reserve_usd=self._reservation(request, reach, input_tokens) if budgeted and request is not None else 0.0,
            reserve_tokens=output_cap(request) if request is not None and policy.tokens_per_minute else 0,
        )
        try:
            if self._down and now < self._probe_at:
                # A Redis that black-holes packets would cost every request the full op timeout:
                # during an outage the backend is tried at most once per PROBE_S.
                raise BackendUnavailable("still down")
            verdict = await self._backend.admit(ask)
        except BackendUnavailable as exc:
            self._outage(exc, now)
            if self._fail_open:
                return Admission(self, caller, None, {}, request, input_tokens)
            raise RateLimited("The gateway's rate limiter is unavailable; try again shortly.", retry_after=1) from None
        if self._down:
            self._down = False
            logger.info("rate_limit_backend_recovered")
        headers = rate_headers(policy, verdict, now)
        if verdict.reason is not None:
            self._refuse(policy, verdict, now, headers)
        return Admission(self, caller, lease_id, headers, request, input_tokens)

    def _refuse(self, policy: KeyPolicy, verdict: Verdict, now: float, headers: dict[str, str]) -> None:
        reason = verdict.reason
        assert reason is not None
        if self._observer is not None:
            self._observer.rate_limited(policy.name, reason)
        if reason == BUDGET:
            raise KeyBudgetExceeded(
                f"This key's {policy.budget_window} budget of ${policy.budget_usd:g} is used up.",
                retry_after=budget_resets_in(policy.budget_window, now),
                rate_headers=headers,
            )
        if reason == "concurrency":
            message, retry = f"This key may have at most {policy.concurrent_streams} requests in flight.", 1
        elif reason == "tokens":
            message = f"This key's limit of {policy.tokens_per_minute} tokens per minute is reached."
            retry = seconds_to_next_minute(now)
        else:
            message = f"This key's limit of {policy.requests_per_minute} requests per minute is reached."
            retry = seconds_to_next_minute(now)
        raise KeyRateLimited(message, retry_after=retry, rate_headers=headers)

    def _outage(self, exc: BaseException, now: float) -> None:
        if self._down:
            if now >= self._probe_at:
                self._probe_at = now + PROBE_S
            return  # one log line and one count per outage, not one per request
        self._down = True
        self._probe_at = now + PROBE_S
        logger.warning("rate_limit_backend_unavailable", error=str(exc), on_backend_error=self.mode)
        if self._observer is not None:
            self._observer.limiter_outage()

    def _estimated(self, model: str) -> None:
        if self._observer is not None:
            self._observer.usage_estimated(model)

    def _settle(self, admission: Admission, model: str, usage: Usage | None, deployment: str | None) -> None:
        policy = admission.caller.policy
        spend = self._spend(model, deployment, usage)
        if spend and self._observer is not None:
            self._observer.spent(policy.name, model, spend)
        if not policy.limited:
            return
        now = self._clock()
        tokens = 0
        if policy.tokens_per_minute and usage is not None:
            # Output, and the input the provider counted beyond admission's estimate (images, a
            # tokenizer unlike four bytes a token): the minute holds what the call really cost.
            tokens = max(0, int(usage.completion_tokens)) + max(0, int(usage.prompt_tokens) - admission.input_tokens)
        self._backend.settle(
            Settlement(
                admission.caller.bucket,
                lease_id=admission.lease_id,
                minute=minute_of(now),
                tokens=tokens,
                budget_window_id=budget_window_id(policy.budget_window, now) if policy.budget_usd is not None else None,
                spend=spend,
            )
        )

    def _spend(self, model: str, deployment: str | None, usage: Usage | None) -> float:
        if usage is None or self._prices is None:
            return 0.0
        cost_in, cost_out = self._prices.charged(model, deployment)
        # The provider's counts are untrusted: a negative one must not credit the key's budget.
        prompt, completion = max(0, usage.prompt_tokens), max(0, usage.completion_tokens)
        spend = (prompt * (cost_in or 0.0) + completion * (cost_out or 0.0)) / 1e6
        if usage.web_searches > 0:  # the provider's own tool runs, priced apart from the tokens
            spend += usage.web_searches * (self._prices.search_fee(deployment) or 0.0)
        return spend

    async def health(self) -> bool:
        return await self._backend.health()

    async def close(self) -> None:
        await self._backend.close()


def rate_headers(policy: KeyPolicy, verdict: Verdict, now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the key's request and token limits."""
    headers: dict[str, str] = {}
    reset = f"{seconds_to_next_minute(now)}s"
    if policy.requests_per_minute:
        headers["x-ratelimit-limit-requests"] = str(policy.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(max(0, policy.requests_per_minute - verdict.requests))
        headers["x-ratelimit-reset-requests"] = reset
    if policy.tokens_per_minute:
        headers["x-ratelimit-limit-tokens"] = str(policy.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, policy.tokens_per_minute - verdict.tokens))
        headers["x-ratelimit-reset-tokens"] = reset
    return headers
