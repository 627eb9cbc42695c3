"""Embeddings through the OpenAI SDK, LiteLLM's own client and raw HTTP, on both provider
paths (the relay and LiteLLM), against the fake provider's ``/v1/embeddings``."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from openai import (
    AsyncOpenAI,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)

from app.config.settings import settings_from_dict
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_provider import EMBED_BROKEN, EMBED_NOT_NUMBERS, Behaviour, FakeProvider, fake_vector

KEY = "sk-embed-all-0123456789"
LIMITED = "sk-embed-limited-0123456789"
CHAT_ONLY = "sk-embed-chat-only-0123456789"
NARROW = "sk-embed-narrow-0123456789"
WIDE = "sk-embed-wide-0123456789"
SILENT = "sk-embed-silent-0123456789"
ENV = {
    "EMB_DEFAULT": KEY,
    "EMB_LIMITED": LIMITED,
    "EMB_CHAT_ONLY": CHAT_ONLY,
    "EMB_NARROW": NARROW,
    "EMB_WIDE": WIDE,
    "EMB_SILENT": SILENT,
    "EMB_PROVIDER_KEY": "sk-provider-0123456789",
    "EMB_SCRIPTS": "sk-embed-scripts-0123456789",
}


def _settings(fake: FakeProvider, fast: bool) -> Any:
    fake.set_behaviour("embed_down", Behaviour(kind="error", status=503, error_message="overloaded"))
    fake.set_behaviour("embed_silent", Behaviour(no_usage=True))
    data = settings_dict(fake.base_url, fast_path=fast, server={"api_keys_env": "EMB_DEFAULT"}, cache={"enabled": True})
    embedding = {"mode": "embedding", "input_cost_per_mtok": 1000.0}
    data["models"]["deployments"] += [
        {
            "name": "embed",
            "litellm_model": "openai/embed",
            "api_base": fake.base_url,
            "fast_path": fast,
            "info": embedding,
        },
        {
            "name": "embed_garbled",
            "litellm_model": f"openai/{EMBED_NOT_NUMBERS}",
            "api_base": fake.base_url,
            "fast_path": fast,
            "info": embedding,
        },
        {
            "name": "embed_fallback",
            "litellm_model": "openai/embed_down",
            "api_base": fake.base_url,
            "fast_path": fast,
            "info": embedding,
            "fallbacks": ["embed"],
        },
    ]
    data["models"]["deployments"] += [
        {
            "name": name,
            "litellm_model": f"openai/{upstream}",
            "api_base": fake.base_url,
            "fast_path": fast,
            "info": {"mode": "embedding", "input_cost_per_mtok": price},
            **extra,
        }
        for name, upstream, price, extra in [
            ("embed_dear", "embed", 1e6, {}),  # $1 a token
            ("embed_cheap_down", "embed_down", 1.0, {"fallbacks": ["embed_dear"]}),
            ("embed_silent", "embed_silent", 1e6, {}),
        ]
    ]
    data["models"]["deployments"] += [
        {
            "name": upstream,
            "litellm_model": f"openai/{upstream}",
            "api_base": fake.base_url,
            "fast_path": fast,
            "info": embedding,
        }
        for upstream in EMBED_BROKEN
    ]
    # A provider LiteLLM reaches with its own mapping (fast_path off), which takes no `user`.
    data["models"]["deployments"].append(
        {
            "name": "embed_mistral",
            "litellm_model": "mistral/embed",
            "api_base": fake.base_url,
            "api_key_env": "EMB_PROVIDER_KEY",
            "fast_path": False,
            "info": embedding,
        }
    )
    # Cohere through LiteLLM's own mapping, which takes text only.
    data["models"]["deployments"].append(
        {
            "name": "embed_cohere",
            "litellm_model": "cohere/embed-english-v3.0",
            "api_base": fake.base_url,
            "api_key_env": "EMB_PROVIDER_KEY",
            "fast_path": False,
            "info": embedding,
        }
    )
    unlimited = {"budget_usd": 1e9, "budget_window": "total"}
    data["keys"] = [
        {"name": "limited", "key_env": "EMB_LIMITED", "tokens_per_minute": 40},
        {"name": "scripts", "key_env": "EMB_SCRIPTS", "tokens_per_minute": 40},
        {"name": "chat_only", "key_env": "EMB_CHAT_ONLY", "models": ["normal"]},
        {"name": "narrow", "key_env": "EMB_NARROW", "models": ["embed_cheap_down"], **unlimited},
        {"name": "wide", "key_env": "EMB_WIDE", "models": ["embed_cheap_down", "embed_dear"], **unlimited},
        {"name": "silent", "key_env": "EMB_SILENT", **unlimited},
    ]
    return settings_from_dict(data, ENV)


@pytest.fixture(scope="module", params=["fast", "full"])
def embed_gateway(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    server = ServerThread(_settings(fake_provider, request.param == "fast"), environ=ENV).start(timeout=90)
    yield server
    server.stop()


@pytest.fixture
async def sdk(embed_gateway: ServerThread) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{embed_gateway.base_url}/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


def floats32(values: list[float]) -> list[float]:
    """What survives a float32 round trip (base64 answers carry float32)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


async def test_float_batch_through_the_openai_sdk(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    inputs = ["alpha", "beta", "gamma"]
    result = await sdk.embeddings.create(model="embed", input=inputs, encoding_format="float", dimensions=4)
    assert result.object == "list" and result.model == "embed"
    assert [d.index for d in result.data] == [0, 1, 2]
    assert [d.embedding for d in result.data] == [fake_vector(x, 4) for x in inputs]
    assert result.usage.prompt_tokens == 9 and result.usage.total_tokens == 9
    sent = fake.requests[-1].body
    assert sent["input"] == inputs and sent["dimensions"] == 4
    assert sent.get("encoding_format", "float") == "float"  # asked for (the relay), or the default (LiteLLM)


async def test_base64_is_the_sdk_default(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    result = await sdk.embeddings.create(model="embed", input="hello base64")  # the SDK asks for base64
    assert result.data[0].embedding == pytest.approx(floats32(fake_vector("hello base64", 8)))
    response = await sdk.embeddings.with_raw_response.create(
        model="embed", input="hello base64", encoding_format="base64"
    )
    raw = response.http_response.json()["data"][0]["embedding"]
    assert isinstance(raw, str)
    # Asked of the provider as base64 (a quarter of floats' JSON) where the relay calls it; LiteLLM
    # asks for floats.
    assert fake.requests[-1].body.get("encoding_format") in ("base64", None)
    data = base64.b64decode(raw)
    assert list(struct.unpack(f"<{len(data) // 4}f", data)) == floats32(fake_vector("hello base64", 8))


async def test_openais_optional_fields_go_only_to_providers_that_take_them(
    sdk: AsyncOpenAI, fake: FakeProvider
) -> None:
    """Mistral (through LiteLLM's own mapping) takes no `user`, and LiteLLM refuses to send it: the
    call goes on without it rather than failing the client's request."""
    result = await sdk.embeddings.create(model="embed_mistral", input="hi", user="u1", encoding_format="float")
    assert result.data[0].embedding == fake_vector("hi", 8)
    sent = fake.requests[-1].body
    assert sent["input"] in ("hi", ["hi"]) and "user" not in sent


async def test_a_broken_providers_answer_is_a_502_and_credits_nothing(
    embed_gateway: ServerThread, sdk: AsyncOpenAI
) -> None:
    """Base64 that is not whole 32-bit floats, a value beyond float32's range asked for as base64:
    the provider's fault, a 502 (they were 500s); a negative token count is read as none (it was
    charged as a credit to the key's budget)."""
    for model, encoding in (("embed_short_base64", "float"), ("embed_huge", "base64")):
        with pytest.raises(InternalServerError) as failed:
            await sdk.embeddings.create(model=model, input="x", encoding_format=encoding)  # type: ignore[arg-type]
        assert failed.value.status_code == 502
    result = await sdk.embeddings.create(model="embed_negative", input="x", encoding_format="float")
    assert result.usage.prompt_tokens == 0
    spend = embed_gateway.app.state.metrics.spend
    assert all(usd >= 0 for usd in spend.values())


async def test_token_arrays_to_cohere_are_a_400(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    """LiteLLM's Cohere mapping takes text only and refuses token arrays with what it calls a
    connection error (a 502, retried): refused before any call. Another provider on LiteLLM's path
    gets them and answers for itself."""
    calls = len(fake.requests)
    for value in ([[1, 2, 3]], [1, 2, 3]):
        with pytest.raises(BadRequestError) as refused:
            await sdk.embeddings.create(model="embed_cohere", input=value, encoding_format="float")  # type: ignore[arg-type]
        error = refused.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"]) == ("unsupported_content", "input")
    assert len(fake.requests) == calls
    result = await sdk.embeddings.create(model="embed_mistral", input=[[1, 2, 3]], encoding_format="float")
    assert result.data[0].embedding == fake_vector([1, 2, 3], 8)


async def test_token_arrays(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    result = await sdk.embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert [d.embedding for d in result.data] == [fake_vector([1, 2, 3], 8), fake_vector([4, 5], 8)]
    assert result.usage.prompt_tokens == 5


async def test_cache_answers_the_second_call(embed_gateway: ServerThread, fake: FakeProvider) -> None:
    body = {"model": "embed", "input": "cache me please", "encoding_format": "float"}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=embed_gateway.base_url, timeout=10, headers=headers) as client:
        first = await client.post("/v1/embeddings", json=body)
        second = await client.post("/api/embeddings", json={**body, "encoding_format": "base64"})
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert fake.calls("embed") == 1
    data = base64.b64decode(second.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(data) // 4}f", data)) == floats32(first.json()["data"][0]["embedding"])


async def test_a_providers_own_field_reaches_it_and_keys_the_cache(
    embed_gateway: ServerThread, fake: FakeProvider, request: pytest.FixtureRequest
) -> None:
    """``input_type`` (Voyage's, Cohere's) is no field of OpenAI's: a body field for the provider
    (through the relay), and part of the cache's key, since it changes the vectors."""
    body = {"model": "embed", "input": "typed input", "encoding_format": "float", "input_type": "query"}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=embed_gateway.base_url, timeout=10, headers=headers) as client:
        query = await client.post("/v1/embeddings", json=body)
        document = await client.post("/v1/embeddings", json={**body, "input_type": "document"})
        again = await client.post("/v1/embeddings", json=body)
    assert [r.status_code for r in (query, document, again)] == [200, 200, 200]
    assert [r.headers["x-cache"] for r in (query, document, again)] == ["MISS", "MISS", "HIT"]
    if "fast" in request.node.callspec.id:
        assert [r.body["input_type"] for r in fake.requests[-2:]] == ["query", "document"]


async def test_fallback_to_another_embedding_model(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    result = await sdk.embeddings.create(model="embed_fallback", input="fall back", encoding_format="float")
    assert result.data[0].embedding == fake_vector("fall back", 8)
    models = [r.model for r in fake.requests]
    # The LiteLLM path may be retried inside LiteLLM's OpenAI embedding handler first (it reads
    # max_retries=0 as its default); the relay's attempts are the gateway's alone.
    assert models[0] == "embed_down" and models[-1] == "embed" and set(models) == {"embed_down", "embed"}


async def spend(server: ServerThread, key: str, model: str, at_least: float) -> float:
    """The key's spend on ``model`` once it reaches ``at_least`` (bounded)."""
    metrics = server.app.state.metrics
    deadline = time.monotonic() + 5
    while metrics.spend.get((key, model), 0.0) < at_least:
        assert time.monotonic() < deadline, f"{key} was charged {metrics.spend.get((key, model))}, not {at_least}"
        await asyncio.sleep(0.01)
    return float(metrics.spend[(key, model)])


async def test_fallbacks_stay_inside_the_allow_list_and_are_priced_as_answered(
    embed_gateway: ServerThread, fake: FakeProvider
) -> None:
    body = {"model": "embed_cheap_down", "input": "fall back", "encoding_format": "float"}
    async with httpx.AsyncClient(base_url=embed_gateway.base_url, timeout=10) as c:
        narrow = await c.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {NARROW}"})
        assert narrow.status_code == 503, narrow.text  # its one fallback is a model this key may not use
        assert {r.model for r in fake.requests} == {"embed_down"}
        wide = await c.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {WIDE}"})
        assert wide.status_code == 200, wide.text
    assert fake.requests[-1].model == "embed"
    # Three tokens answered by the $1-a-token fallback, under the requested name: $3, not $0.000003.
    assert await spend(embed_gateway, "wide", "embed_cheap_down", 3.0) == pytest.approx(3.0)


async def test_an_answer_without_usage_is_charged_its_estimated_input(embed_gateway: ServerThread) -> None:
    body = {"model": "embed_silent", "input": ["a sentence of some forty characters here"] * 4}
    async with httpx.AsyncClient(base_url=embed_gateway.base_url, timeout=10) as c:
        r = await c.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {SILENT}"})
        assert r.status_code == 200, r.text
    assert await spend(embed_gateway, "silent", "embed_silent", 40.0) >= 40.0  # ~10 tokens an input at $1


async def test_chat_model_and_embedding_model_on_the_wrong_route(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    with pytest.raises(BadRequestError) as caught:
        await sdk.embeddings.create(model="normal", input="hi")
    assert caught.value.code == "model_not_supported"
    with pytest.raises(BadRequestError) as caught:
        await sdk.chat.completions.create(model="embed", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_supported"
    with pytest.raises(NotFoundError):
        await sdk.embeddings.create(model="no-such-model", input="hi")
    assert fake.calls() == 0


async def test_vectors_that_are_not_numbers_are_a_502(embed_gateway: ServerThread) -> None:
    """The float answer carries the provider's arrays as they came, so each is checked first: a broken
    provider's answer never reaches the client."""
    async with httpx.AsyncClient(base_url=embed_gateway.base_url, timeout=10) as client:
        for encoding in ("float", "base64"):
            body = {"model": "embed_garbled", "input": "hi", "encoding_format": encoding}
            response = await client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
            assert response.status_code == 502, response.text
            assert response.json()["error"]["type"] == "upstream_error"


async def test_allow_list_and_token_limit(embed_gateway: ServerThread, fake: FakeProvider) -> None:
    base = f"{embed_gateway.base_url}/v1"
    async with AsyncOpenAI(base_url=base, api_key=CHAT_ONLY, max_retries=0, timeout=10) as client:
        with pytest.raises(PermissionDeniedError):
            await client.embeddings.create(model="embed", input="hi")
    async with AsyncOpenAI(base_url=base, api_key=LIMITED, max_retries=0, timeout=10) as client:
        await client.embeddings.create(model="embed", input="x" * 100, encoding_format="float")  # ~26 tokens
        with pytest.raises(RateLimitError):
            await client.embeddings.create(model="embed", input="y" * 100, encoding_format="float")


async def test_text_in_other_scripts_is_estimated_as_a_tokenizer_counts_it(embed_gateway: ServerThread) -> None:
    """36 Chinese characters are ~48 tokens; at four bytes a token they were estimated at 28 (38 with
    the request's wrapping) and got past a key's 40 tokens a minute. Now a token a character (47):
    refused at admission; 100 ASCII characters (~36) still pass."""
    base = f"{embed_gateway.base_url}/v1"
    async with AsyncOpenAI(base_url=base, api_key=ENV["EMB_SCRIPTS"], max_retries=0, timeout=10) as client:
        with pytest.raises(RateLimitError):
            await client.embeddings.create(model="embed", input="字" * 36, encoding_format="float")
        await client.embeddings.create(model="embed", input="x" * 100, encoding_format="float")  # ~26 tokens


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed"}, "input"),
        ({"model": "embed", "input": ""}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": [1, "a"]}, "input"),
        ({"model": "embed", "input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "embed", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "embed", "input": "a", "api_base": "http://evil"}, "api_base"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    embed_gateway: ServerThread, fake: FakeProvider, body: dict[str, Any], param: str
) -> None:
    async with httpx.AsyncClient(base_url=embed_gateway.base_url, timeout=10) as client:
        response = await client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert fake.calls() == 0


async def test_litellm_client_pointed_at_the_gateway(embed_gateway: ServerThread, fake: FakeProvider) -> None:
    from app.providers.litellm_setup import import_litellm

    litellm = import_litellm()
    base = f"{embed_gateway.base_url}/v1"
    result = await litellm.aembedding(
        model="openai/embed", input=["via litellm"], api_base=base, api_key=KEY, encoding_format="float"
    )
    assert result.data[0]["embedding"] == fake_vector("via litellm", 8)
    completion = await litellm.acompletion(
        model="openai/normal", messages=[{"role": "user", "content": "hi"}], api_base=base, api_key=KEY
    )
    assert completion.choices[0].message.content == "Hello, world! This is the fake provider."


@pytest.mark.parametrize(
    "vector", [b"[1,[2]]", b'[1,"a"]', b"[true]", b'{"a":1}', b"[1,null]", b"[[1]]", b'"AAAA"x', b"[1,]"]
)
def test_a_vector_that_is_not_a_flat_array_of_numbers_is_unreadable(vector: bytes) -> None:
    from app.api.embeddings.wire import read_reply
    from app.domain.errors import UpstreamUnavailable

    with pytest.raises(UpstreamUnavailable):
        read_reply(b'{"data":[{"embedding":' + vector + b',"index":0}]}')


def test_a_flat_array_of_numbers_in_any_json_spelling_is_spliced_as_sent() -> None:
    from app.api.embeddings.wire import read_reply

    vector = b"[ 1e5, -2.5E-3,\n0.125 ]"
    assert bytes(read_reply(b'{"data":[{"embedding":' + vector + b"}]}").vectors[0]) == vector
