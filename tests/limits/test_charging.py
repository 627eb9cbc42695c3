"""Charging and admission that a key holder cannot walk around (memory and Redis counters): a call is
charged when its usage never arrives (client gone after the finish chunk, WebSocket cancel, a provider
that sends none), admission reserves a call's cost so concurrent calls cannot overspend, fallbacks stay
inside the key's allow-list, and spend is priced by the deployment that answered."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from app.config.settings import settings_from_dict
from tests.conftest import RedisServer, ServerThread, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.sse import chat_body

CHAT = "/v1/chat/completions"
KEYS = {
    "leaver": "sk-leaver-0123456789abcdef",
    "canceller": "sk-canceller-0123456789abcdef",
    "silent": "sk-silent-0123456789abcdef",
    "reserve": "sk-reserve-0123456789abcdef",
    "tpm": "sk-tpmres-0123456789abcdef",
    "narrow": "sk-narrow-0123456789abcdef",
    "wide": "sk-wide-0123456789abcdef",
    "tooled": "sk-tooled-0123456789abcdef",
    "tooltpm": "sk-tooltpm-0123456789abcdef",
    "messenger": "sk-messenger-0123456789abcdef",
    "bigprompt": "sk-bigprompt-0123456789abcdef",
    "mixer": "sk-mixer-0123456789abcdef",
    "mixbudget": "sk-mixbudget-0123456789abcdef",
    "counter": "sk-counter-0123456789abcdef",
}
ENV = {f"KEY_{name.upper()}": key for name, key in KEYS.items()}
#: $1 a token in and out: a charge in USD reads as a token count.
DOLLAR_A_TOKEN = {"input_cost_per_mtok": 1e6, "output_cost_per_mtok": 1e6}
CENT_A_MILLION = {"input_cost_per_mtok": 0.01, "output_cost_per_mtok": 0.01}
TOKENS = [f" t{i % 10}" for i in range(30)]  # 30 chunks of one token each (three characters)
WORDY = [" forty characters of text, ten tokens..."] * 10  # 10 chunks of ten tokens each


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _settings(fake: FakeProvider, backend: str, redis_url: str | None) -> dict[str, Any]:
    fake.set_behaviour("metered", Behaviour(content=TOKENS, usage_delay_s=1.0))
    fake.set_behaviour("unmetered", Behaviour(content=TOKENS, no_usage=True))
    fake.set_behaviour("wordy", Behaviour(content=WORDY, usage_delay_s=1.0))
    fake.set_behaviour("imagery", Behaviour(content=["ok"], usage=(900, 1)))  # input the estimate cannot see
    fake.set_behaviour("held", Behaviour(first_delay_s=1.0, content=["a", "b"], usage=(5, 2)))
    fake.set_behaviour("broken", Behaviour(kind="error", status=503, error_message="down"))
    fake.set_behaviour("premium", Behaviour(content=["p"] * 4, usage=(10, 4)))
    sections: dict[str, Any] = {"rate_limit": {"backend": backend}}
    if redis_url is not None:
        sections["redis"] = {"url": redis_url}
    data = settings_dict(fake.base_url, **sections)

    def deployment(name: str, info: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"name": name, "litellm_model": f"openai/{name}", "api_base": fake.base_url, "info": info, **extra}

    data["models"]["deployments"] += [
        deployment("metered", DOLLAR_A_TOKEN),
        deployment("unmetered", DOLLAR_A_TOKEN),
        deployment("wordy", DOLLAR_A_TOKEN),
        deployment("imagery", DOLLAR_A_TOKEN),
        deployment("held", DOLLAR_A_TOKEN),
        deployment("broken", CENT_A_MILLION, fallbacks=["premium"]),
        deployment("premium", DOLLAR_A_TOKEN),
        # A group whose first member is cheap and (by weight) all but never answers: its dear
        # member answers, at its own prices.
        deployment("mixed", CENT_A_MILLION, weight=1e-9) | {"litellm_model": "openai/cheap"},
        deployment("mixed", DOLLAR_A_TOKEN, weight=1e9) | {"litellm_model": "openai/premium"},
        deployment("mixheld", CENT_A_MILLION, weight=1e-9) | {"litellm_model": "openai/cheap"},
        deployment("mixheld", DOLLAR_A_TOKEN, weight=1e9) | {"litellm_model": "openai/held"},
    ]

    def key(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "key_env": f"KEY_{name.upper()}", "budget_usd": 1e9, "budget_window": "total", **extra}

    data["keys"] = [
        key("leaver"),
        key("canceller"),
        key("silent"),
        key("reserve", budget_usd=50.0, models=["held"]),
        {"name": "tpm", "key_env": "KEY_TPM", "tokens_per_minute": 400, "models": ["held"]},
        key("narrow", models=["broken"]),
        key("wide", models=["broken", "premium"]),
        key("tooled"),
        key("messenger"),
        {"name": "bigprompt", "key_env": "KEY_BIGPROMPT", "tokens_per_minute": 500},
        {"name": "tooltpm", "key_env": "KEY_TOOLTPM", "tokens_per_minute": 400, "models": ["held"]},
        key("mixer", models=["mixed"]),
        key("mixbudget", budget_usd=50.0, models=["mixheld"]),
        {"name": "counter", "key_env": "KEY_COUNTER", "requests_per_minute": 2},
    ]
    return data


@pytest.fixture(scope="module", params=["memory", "redis"])
def charged(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    redis = RedisServer().start() if request.param == "redis" else None
    data = _settings(fake_provider, request.param, redis.url if redis is not None else None)
    server = ServerThread(settings_from_dict(data, ENV), environ=ENV).start()
    yield server
    server.stop()
    if redis is not None:
        redis.stop()


async def charge_of(server: ServerThread, key: str, model: str, at_least: float) -> float:
    """The key's spend on ``model`` once it reaches ``at_least`` and the backend has it (bounded)."""
    metrics = server.app.state.metrics
    backend = server.app.state.services.limiter._backend
    deadline = time.monotonic() + 5
    while metrics.spend.get((key, model), 0.0) < at_least or getattr(backend, "_tasks", ()):
        assert time.monotonic() < deadline, f"{key} was charged {metrics.spend.get((key, model))}, not {at_least}"
        await asyncio.sleep(0.01)
    return float(metrics.spend[(key, model)])


async def in_flight_settles(server: ServerThread, key: str) -> None:
    """Until no call of ``key`` holds a lease or a reservation (bounded)."""
    backend = server.app.state.services.limiter._backend
    deadline = time.monotonic() + 5
    while True:
        if hasattr(backend, "in_flight"):
            held = backend.in_flight(key)
        else:
            held = await _redis_in_flight(server, key)
        if held == (0, 0.0, 0):
            return
        assert time.monotonic() < deadline, f"{key} still holds {held}"
        await asyncio.sleep(0.02)


async def _redis_in_flight(server: ServerThread, key: str) -> tuple[int, float, int]:
    from redis.asyncio import Redis

    client = Redis.from_url(server.settings.redis.url)
    try:
        leases = await client.zcard(f"chat:rl:{{{key}}}:leases")
        held = await client.hvals(f"chat:rl:{{{key}}}:resv")
    finally:
        await client.aclose()
    usd = sum(float(v.split()[0]) for v in held)
    tokens = sum(int(v.split()[1]) for v in held)
    return int(leases), usd, tokens


async def test_leaving_after_the_finish_chunk_is_charged(charged: ServerThread, fake: FakeProvider) -> None:
    metrics = charged.app.state.metrics
    before = metrics.usage_estimates.get(("metered",), 0)
    delivered = 0
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        body = chat_body("metered", stream=True)
        async with c.stream("POST", CHAT, json=body, headers=auth("leaver")) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choice = json.loads(line[6:])["choices"][0]
                delivered += bool(choice["delta"].get("content"))
                if choice["finish_reason"]:
                    break  # the usage chunk is a second away: leave now, as a client may
    assert delivered == len(TOKENS)
    charged_usd = await charge_of(charged, "leaver", "metered", delivered)
    assert charged_usd >= delivered  # $1 a token: at least every token the client got
    assert metrics.usage_estimates[("metered",)] == before + 1
    await in_flight_settles(charged, "leaver")


#: Tool definitions of ~2,000 tokens (four bytes a token) beside a one-line conversation.
TOOLS = [
    {"type": "function", "function": {"name": f"tool{i}", "description": "d" * 1000, "parameters": {"type": "object"}}}
    for i in range(8)
]


async def test_a_call_whose_usage_never_arrives_is_charged_its_tools(charged: ServerThread) -> None:
    """The tools are input the provider bills: the estimate that charges a call left before its usage
    counts them (an agent's tools are most of its prompt)."""
    tools_tokens = len(json.dumps(TOOLS)) // 4
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        body = chat_body("metered", stream=True) | {"tools": TOOLS}
        async with c.stream("POST", CHAT, json=body, headers=auth("tooled")) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["finish_reason"]:
                    break  # before the usage chunk
    charged_usd = await charge_of(charged, "tooled", "metered", tools_tokens)
    assert tools_tokens <= charged_usd < tools_tokens + 200
    await in_flight_settles(charged, "tooled")


async def test_tools_count_against_tokens_per_minute(charged: ServerThread) -> None:
    """400 tokens a minute: a one-line conversation carrying ~2,000 tokens of tools is refused before any
    provider call; without the tools it is admitted."""
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        refused = await c.post(CHAT, json=chat_body("held") | {"tools": TOOLS}, headers=auth("tooltpm"))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
        admitted = await c.post(CHAT, json=chat_body("held"), headers=auth("tooltpm"))
        assert admitted.status_code == 200, admitted.text
    await in_flight_settles(charged, "tooltpm")


async def test_a_messages_stream_left_before_its_usage_is_charged_what_it_carried(charged: ServerThread) -> None:
    """Through the Messages API, the estimate counts the text each event carried (ten tokens a chunk
    here), as chat completions' does, not one token an event."""
    assert len(WORDY[0]) == 40
    body = {"model": "wordy", "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    deltas = 0
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        async with c.stream("POST", "/v1/messages", json=body, headers={"x-api-key": KEYS["messenger"]}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                deltas += line.startswith("data: ") and '"text_delta"' in line
                if deltas == len(WORDY):
                    break  # all the text, before message_delta (the usage is a second away)
    charged_usd = await charge_of(charged, "messenger", "wordy", 10 * len(WORDY))
    assert 10 * len(WORDY) <= charged_usd < 10 * len(WORDY) + 50
    await in_flight_settles(charged, "messenger")


async def test_counting_tokens_is_a_request_of_the_key_and_free(charged: ServerThread, fake: FakeProvider) -> None:
    """Tokenizing is the gateway's own CPU: a key's ``count_tokens`` calls count against its
    requests a minute (the Anthropic 429 past them), and cost nothing."""
    body = {"model": "metered", "messages": [{"role": "user", "content": "how many tokens is this?"}]}
    key = {"x-api-key": KEYS["counter"]}
    if time.time() % 60 > 55:
        await asyncio.sleep(61 - time.time() % 60)  # all three calls in one clock minute
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        for _ in range(2):
            counted = await c.post("/v1/messages/count_tokens", json=body, headers=key)
            assert counted.status_code == 200, counted.text
            assert counted.json()["input_tokens"] > 0
        refused = await c.post("/v1/messages/count_tokens", json=body, headers=key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert fake.calls() == 0
    assert charged.app.state.metrics.spend.get(("counter", "metered"), 0.0) == 0.0
    await in_flight_settles(charged, "counter")


async def test_the_providers_input_count_corrects_the_minutes_estimate(charged: ServerThread) -> None:
    """500 tokens a minute; the provider counts 900 input tokens (images, say) where admission estimated
    ~10: the minute holds the provider's count, so the next call waits for the next minute."""
    if time.time() % 60 > 50:
        await asyncio.sleep(61 - time.time() % 60)  # both calls in one clock minute
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        first = await c.post(CHAT, json=chat_body("imagery"), headers=auth("bigprompt"))
        assert first.status_code == 200, first.text
        await in_flight_settles(charged, "bigprompt")
        second = await c.post(CHAT, json=chat_body("imagery"), headers=auth("bigprompt"))
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded", second.text


async def test_a_websocket_cancel_is_charged(charged: ServerThread) -> None:
    received = 0
    async with connect(
        charged.ws_url.replace("/v1/", "/v1/"), subprotocols=["chat.v1", f"bearer.{KEYS['canceller']}"]
    ) as ws:  # type: ignore[list-item]
        body = chat_body("metered")
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "x", "request": body}))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "chat.completion.chunk":
                    received += bool(frame["chunk"]["choices"] and frame["chunk"]["choices"][0]["delta"].get("content"))
                    if received == 5:
                        await ws.send(json.dumps({"type": "chat.completion.cancel", "id": "x"}))
                elif frame["type"] == "chat.completion.done":
                    assert frame["finish_reason"] == "cancelled"
                    break
    assert received >= 5
    assert await charge_of(charged, "canceller", "metered", received) >= received
    await in_flight_settles(charged, "canceller")


async def test_a_provider_without_usage_is_charged_from_the_estimate(charged: ServerThread) -> None:
    metrics = charged.app.state.metrics
    before = metrics.usage_estimates.get(("unmetered",), 0)
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        async with c.stream("POST", CHAT, json=chat_body("unmetered", stream=True), headers=auth("silent")) as r:
            assert r.status_code == 200
            await r.aread()
        stream_charge = await charge_of(charged, "silent", "unmetered", len(TOKENS))
        r = await c.post(CHAT, json=chat_body("unmetered"), headers=auth("silent"))
        assert r.status_code == 200
        # The whole answer, without usage, is charged from its size: at least its tokens again.
        assert await charge_of(charged, "silent", "unmetered", stream_charge + len(TOKENS)) > stream_charge
    assert metrics.usage_estimates[("unmetered",)] == before + 2


async def a_running_call_holds_the_budget(c: httpx.AsyncClient, charged: ServerThread, key: str, model: str) -> None:
    """A call with max_tokens=60 on a $50 budget, at $1 a token, reserves over $60: while it runs the
    key's next call is refused (budget_exceeded); then it settles, charged its usage ($7)."""
    body = chat_body(model, stream=True) | {"max_tokens": 60}
    async with c.stream("POST", CHAT, json=body, headers=auth(key)) as first:
        assert first.status_code == 200
        refused = await c.post(CHAT, json=chat_body(model) | {"max_tokens": 1}, headers=auth(key))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        await first.aread()
    assert await charge_of(charged, key, model, 7) == pytest.approx(7.0)


async def test_reservations_hold_the_budget_against_concurrent_calls(charged: ServerThread) -> None:
    """$50 budget, $1 a token: while a call that may cost over $60 runs, the next is refused; once it
    settles, the next is admitted again."""
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        await a_running_call_holds_the_budget(c, charged, "reserve", "held")
        await in_flight_settles(charged, "reserve")
        again = await c.post(CHAT, json=chat_body("held"), headers=auth("reserve"))
        assert again.status_code == 200, again.text
    await in_flight_settles(charged, "reserve")


async def test_an_output_cap_no_model_has_is_a_reservation_not_a_500(charged: ServerThread) -> None:
    """``max_tokens`` and ``max_completion_tokens`` are the client's integers, of any size: priced as
    they come they overflowed a float (a 500 for a key with a budget or a token limit)."""
    huge = 10**400
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        for key in ("reserve", "tpm"):
            for field in ("max_tokens", "max_completion_tokens"):
                answer = await c.post(CHAT, json=chat_body("held", **{field: huge}), headers=auth(key))
                assert answer.status_code in (200, 429), (key, field, answer.text)
                await in_flight_settles(charged, key)


async def test_token_reservations_hold_the_minute(charged: ServerThread) -> None:
    """400 tokens a minute; a call with max_tokens=395 holds them while it runs."""
    # The reservation alone must leave no room for the next call's input (9 tokens): with 390, a
    # minute that began between the two calls dropped the first call's input from the count (it is
    # the old minute's), 390 + 9 fit, and the second call was admitted (one CI run in many).
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        body = chat_body("held", stream=True) | {"max_tokens": 395}
        async with c.stream("POST", CHAT, json=body, headers=auth("tpm")) as first:
            assert first.status_code == 200
            refused = await c.post(CHAT, json=chat_body("held"), headers=auth("tpm"))
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
            await first.aread()
    await in_flight_settles(charged, "tpm")


async def test_fallbacks_stay_inside_the_allow_list_and_are_priced_as_answered(
    charged: ServerThread, fake: FakeProvider
) -> None:
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        narrow = await c.post(CHAT, json=chat_body("broken"), headers=auth("narrow"))
        assert narrow.status_code == 503, narrow.text
        assert fake.calls("premium") == 0  # the key may not use premium: never tried for it
        wide = await c.post(CHAT, json=chat_body("broken"), headers=auth("wide"))
        assert wide.status_code == 200, wide.text
        assert wide.json()["choices"][0]["message"]["content"] == "pppp"
        assert fake.calls("premium") == 1
    # Priced by premium ($1 a token: 10 in + 4 out), kept under the requested name.
    assert await charge_of(charged, "wide", "broken", 14) == pytest.approx(14.0)
    assert charged.app.state.metrics.spend.get(("narrow", "broken"), 0.0) == 0.0  # a refusal costs nothing


async def test_a_group_member_is_charged_at_its_own_prices(charged: ServerThread, fake: FakeProvider) -> None:
    # The group lists its first member's prices (a cent a million tokens); its dear member answered.
    before = fake.calls("premium")
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        answer = await c.post(CHAT, json=chat_body("mixed"), headers=auth("mixer"))
        assert answer.status_code == 200, answer.text
    assert fake.calls("premium") == before + 1 and fake.calls("cheap") == 0
    assert await charge_of(charged, "mixer", "mixed", 14) == pytest.approx(14.0)  # 10 in + 4 out, $1 each


async def test_admission_reserves_at_a_groups_dearest_member(charged: ServerThread) -> None:
    """$50 budget on a group listed at a cent a million tokens whose answering member costs $1 a
    token: a running call holds the budget at the dear member's prices."""
    async with httpx.AsyncClient(base_url=charged.base_url, timeout=10) as c:
        await a_running_call_holds_the_budget(c, charged, "mixbudget", "mixheld")
    await in_flight_settles(charged, "mixbudget")
