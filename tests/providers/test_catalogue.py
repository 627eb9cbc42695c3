"""Model catalogue: classification on LiteLLM's shipped metadata, single-flight refresh, endpoints."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import httpx
import openai
import pytest

from app.catalogue.catalogue import Catalogue, Snapshot, build_snapshot
from app.catalogue.classify import Criteria, categories, search
from app.config.settings import DeploymentSettings, ModelInfoOverride
from app.providers.litellm_metadata import ShippedMetadata
from tests.conftest import ServerThread


def dep(name: str, litellm_model: str, **info: Any) -> DeploymentSettings:
    return DeploymentSettings(name=name, litellm_model=litellm_model, info=ModelInfoOverride(**info))


REAL = [
    dep("mini", "openai/gpt-4o-mini"),
    dep("o1", "openai/o1"),
    dep("embed", "openai/text-embedding-3-small"),
    dep("sonnet", "anthropic/claude-sonnet-4-5"),
    dep("flash", "gemini/gemini-2.5-flash"),
    dep(
        "local",
        "ollama_chat/llama3.1",
        mode="chat",
        max_input_tokens=131072,
        capabilities=["tools"],
        input_cost_per_mtok=0.0,
        output_cost_per_mtok=0.0,
    ),
    dep("mystery", "hosted_vllm/unknown-model"),
]
#: LiteLLM's shipped metadata for the models above, read without importing LiteLLM.
SHIPPED = ShippedMetadata(d.litellm_model for d in REAL)
model_metadata, provider_of = SHIPPED.metadata, SHIPPED.provider_of


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return build_snapshot(REAL, model_metadata, provider_of)


def test_classification_from_litellm_metadata(snapshot: Snapshot) -> None:
    mini = snapshot.by_id["mini"]
    assert mini.provider == "openai"
    assert mini.mode == "chat"
    assert mini.max_input_tokens == 128000
    assert {"vision", "tools", "json_mode"} <= set(mini.capabilities)
    assert mini.input_cost_per_mtok == pytest.approx(0.15)
    assert "reasoning" in snapshot.by_id["o1"].capabilities
    assert "vision" in snapshot.by_id["sonnet"].capabilities
    assert snapshot.by_id["flash"].max_input_tokens >= 1_000_000
    assert "context:xlarge" in snapshot.by_id["flash"].categories


def test_embedding_model_is_not_a_chat_model(snapshot: Snapshot) -> None:
    embed = snapshot.by_id["embed"]
    assert embed.mode == "embedding"
    assert "mode:chat" not in embed.categories
    assert "embed" not in [m.id for m in search(snapshot.models, Criteria(mode="chat"))]


def test_overrides_and_unknown_values(snapshot: Snapshot) -> None:
    local = snapshot.by_id["local"]
    assert (local.provider, local.mode, local.max_input_tokens) == ("ollama_chat", "chat", 131072)
    assert local.capabilities == ["tools"]
    assert "price:free" in local.categories
    mystery = snapshot.by_id["mystery"]
    assert mystery.provider == "hosted_vllm"
    assert (mystery.mode, mystery.max_input_tokens, mystery.input_cost_per_mtok) == (None, None, None)
    assert mystery.capabilities == []


def test_override_wins_over_litellm() -> None:
    snap = build_snapshot(
        [dep("mini", "openai/gpt-4o-mini", max_input_tokens=1000, capabilities=["tools"])], model_metadata, provider_of
    )
    assert snap.by_id["mini"].max_input_tokens == 1000
    assert snap.by_id["mini"].capabilities == ["tools"]


def test_each_group_member_has_its_own_prices() -> None:
    members = [
        dep("mixed", "openai/gpt-4o-mini"),  # LiteLLM's prices
        dep("mixed", "openai/o1", input_cost_per_mtok=20.0),  # its own input price, LiteLLM's output price
        dep("mixed", "hosted_vllm/unknown-model"),  # none of its own: the group's listed ones
    ]
    for n, member in enumerate(members):
        member.id = f"mixed-{n}"
    snap = build_snapshot(members, model_metadata, provider_of)
    listed = (snap.by_id["mixed"].input_cost_per_mtok, snap.by_id["mixed"].output_cost_per_mtok)
    # The list shows the group's merged overrides over its first member LiteLLM knows.
    assert listed == pytest.approx((20.0, 0.6))
    assert snap.member_prices["mixed-0"] == pytest.approx((0.15, 0.6))
    assert snap.member_prices["mixed-1"] == pytest.approx((20.0, 60.0))
    assert snap.member_prices["mixed-2"] == pytest.approx(listed)
    assert snap.dearest["mixed"] == pytest.approx((20.0, 60.0))


def test_categories_and_search(snapshot: Snapshot) -> None:
    cats = categories(snapshot.models)
    assert set(cats["provider:openai"]) == {"mini", "o1", "embed"}
    assert "mini" in cats["capability:vision"]
    ids = lambda c: sorted(m.id for m in search(snapshot.models, c))  # noqa: E731
    assert ids(Criteria(capabilities=("vision",), provider="openai")) == ["mini", "o1"]
    assert ids(Criteria(min_context=150_000)) == ["flash", "o1", "sonnet"]
    assert "mystery" not in ids(Criteria(min_context=1))
    assert ids(Criteria(max_input_cost=1.0, mode="chat")) == ["flash", "local", "mini"]
    assert ids(Criteria(capabilities=("vision", "reasoning"))) == ["flash", "o1", "sonnet"]
    assert ids(Criteria(capabilities=("vision", "reasoning"), max_input_cost=1.0)) == ["flash"]


async def test_single_flight_cold_refresh() -> None:
    built = 0
    gate = asyncio.Event()

    async def build() -> Snapshot:
        nonlocal built
        built += 1
        await gate.wait()
        return build_snapshot(REAL[:1], model_metadata, provider_of)

    catalogue = Catalogue(build, refresh_s=60)
    waiters = [asyncio.create_task(catalogue.get()) for _ in range(100)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert built == 1
    assert all(r is results[0] for r in results)


async def test_a_first_build_that_fails_after_its_callers_left_leaves_nothing_unretrieved() -> None:
    # The only caller gives up (its request ended) while the first build runs; the build then fails.
    # Its error was for that caller, not for the loop to log as "Task exception was never retrieved".
    gate = asyncio.Event()

    async def build() -> Snapshot:
        await gate.wait()
        raise RuntimeError("metadata source down")

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        catalogue = Catalogue(build, refresh_s=60)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(catalogue.get(), 0.01)
        gate.set()
        for _ in range(100):  # bounded: the build ends on the next turns
            if catalogue.failures:
                break
            await asyncio.sleep(0.001)
        assert catalogue.failures == 1
        del catalogue
        gc.collect()  # the catalogue and its build are gone: the collector reports what they held
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []


async def test_refresh_at_most_every_period_and_failure_keeps_snapshot() -> None:
    now = [0.0]
    fail = [False]

    async def build() -> Snapshot:
        if fail[0]:
            raise RuntimeError("metadata source down")
        return build_snapshot(REAL[:2], model_metadata, provider_of)

    catalogue = Catalogue(build, refresh_s=10, clock=lambda: now[0])
    first = await catalogue.get()
    now[0] = 5
    assert await catalogue.get() is first
    assert catalogue.builds == 1
    now[0] = 11
    fail[0] = True
    assert await catalogue.get() is first  # stale snapshot served while the refresh runs
    await asyncio.sleep(0.01)
    assert catalogue.failures == 1
    assert catalogue.current() is first
    assert await catalogue.get() is first


@pytest.mark.usefixtures("fake")
async def test_openai_sdk_lists_models(gateway: ServerThread) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
    models = [m async for m in sdk.models.list()]
    assert sorted(m.id for m in models) == sorted(d.name for d in gateway.settings.models.deployments)
    assert all(m.object == "model" and m.owned_by for m in models)


async def test_models_endpoints_share_the_configured_names(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    names = sorted(d.name for d in gateway.settings.models.deployments)
    info = (await client.get("/api/models")).json()["data"]
    assert sorted(m["id"] for m in info) == names
    keys = {
        "id",
        "provider",
        "mode",
        "max_input_tokens",
        "max_output_tokens",
        "input_cost_per_mtok",
        "output_cost_per_mtok",
        "capabilities",
        "categories",
    }
    assert all(set(m) == keys for m in info)
    cats = (await client.get("/api/models/categories")).json()["categories"]
    assert set().union(*cats.values()) <= set(names)
    assert sorted(cats["provider:openai"]) == sorted(n for n in names if n != "demo")


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("min_context=abc", "min_context"),
        ("min_context=-5", "min_context"),
        ("max_input_cost=cheap", "max_input_cost"),
        ("capability=telepathy", "capability"),
        ("colour=blue", "colour"),
        ("provider=", "provider"),
        ("provider=a&provider=b", "provider"),
    ],
)
async def test_search_bad_parameters(client: httpx.AsyncClient, query: str, param: str) -> None:
    response = await client.get(f"/api/models/search?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]


async def test_search_combinations_over_http(client: httpx.AsyncClient) -> None:
    everything = (await client.get("/api/models/search")).json()["data"]
    assert len(everything) == len((await client.get("/api/models")).json()["data"])
    openai_only = (await client.get("/api/models/search?provider=openai")).json()["data"]
    assert "demo" not in [m["id"] for m in openai_only] and openai_only
    none = (await client.get("/api/models/search?provider=openai&min_context=1")).json()["data"]
    assert none == []  # the fake provider's models have no known context window
