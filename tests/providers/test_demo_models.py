"""The built-in demo models, served from the shipped config/default.toml by a real gateway.

`demo` answers in markdown built from the prompt, `demo-slow` is paced, `demo-error` fails before its
first token (a real HTTP status) or, asked with the word "midway", in-band after a few words. All of it
with no key and no network; the catalogue files them under the `demo` provider.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from openai import AsyncOpenAI, RateLimitError

from app.config.settings import load_settings
from tests.conftest import ServerThread

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def shipped() -> Iterator[ServerThread]:
    server = ServerThread(load_settings(environ={})).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def http(shipped: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=shipped.base_url, timeout=20) as client:
        yield client


def ask(model: str, prompt: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


async def test_demo_answers_in_markdown_built_from_the_prompt(http: httpx.AsyncClient) -> None:
    reply = await http.post(CHAT, json=ask("demo", "Tell me | about `tables` please"))
    assert reply.status_code == 200, reply.text
    text = reply.json()["choices"][0]["message"]["content"]
    assert text.startswith("## ")  # a heading
    assert "\n1. " in text and "\n2. " in text  # a list
    assert "```python\n" in text and "\n```\n" in text  # a code block
    assert (
        "| word | letters | vowels |\n| --- | ---: | ---: |\n| Tell | 4 | 1 |" in text
    )  # a table of the prompt's words
    # The prompt is quoted without breaking out of its code span or a table cell.
    assert "You said `Tell me | about 'tables' please`" in text
    assert "| tables | 6 | 2 |" in text


async def test_demo_streams_the_same_markdown_token_by_token(http: httpx.AsyncClient) -> None:
    whole = (await http.post(CHAT, json=ask("demo", "hi there"))).json()["choices"][0]["message"]["content"]
    deltas: list[str] = []
    async with http.stream("POST", CHAT, json=ask("demo", "hi there", stream=True)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                deltas.append(delta.get("content") or "")
    assert "".join(deltas) == whole
    assert len([d for d in deltas if d]) > 50


async def test_demo_slow_is_paced(http: httpx.AsyncClient) -> None:
    arrivals: list[float] = []
    async with http.stream("POST", CHAT, json=ask("demo-slow", "go", stream=True)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                arrivals.append(time.monotonic())
                if len(arrivals) == 6:
                    break
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.05, gaps  # one word at a time, about 0.1 s apart


async def test_demo_error_fails_before_the_first_token_with_a_real_status(shipped: ServerThread) -> None:
    sdk = AsyncOpenAI(base_url=f"{shipped.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(RateLimitError) as refused:
        await sdk.chat.completions.create(model="demo-error", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 429
    assert refused.value.response.headers["retry-after"] == "2"
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded"
    assert str(body["message"]).startswith("demo-error: this is how a provider over its rate limit answers")
    with pytest.raises(RateLimitError):
        await sdk.chat.completions.create(model="demo-error", messages=[{"role": "user", "content": "hi"}], stream=True)


async def test_demo_error_midway_fails_in_band_after_some_words(http: httpx.AsyncClient) -> None:
    events: list[str] = []
    async with http.stream("POST", CHAT, json=ask("demo-error", "fail midway please", stream=True)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith(("data: ", "event: ")):
                events.append(line)
    words = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
        for e in events
        if e.startswith("data: {") and "chat.completion.chunk" in e
    )
    assert words.startswith("This answer starts well")
    assert "event: error" in events and "data: [DONE]" not in events
    error = json.loads(events[events.index("event: error") + 1][6:])["error"]
    assert error["code"] == "upstream_unavailable" and "broke off" in error["message"]
    assert "litellm" not in error["message"] and "Exception" not in error["message"]  # the provider's words
    first = json.loads(next(e for e in events if e.startswith("data: {"))[6:])
    assert first["model"] == "demo-error"
    json_reply = await http.post(CHAT, json=ask("demo-error", "midway"))
    assert json_reply.status_code == 502 and json_reply.json()["error"]["code"] == "upstream_unavailable"


async def test_the_catalogue_lists_the_demo_models(http: httpx.AsyncClient) -> None:
    models = {m["id"]: m for m in (await http.get("/api/models")).json()["data"]}
    assert {"demo", "demo-slow", "demo-error"} <= set(models)
    assert all(models[name]["provider"] == "demo" for name in ("demo", "demo-slow", "demo-error"))
    categories = (await http.get("/api/models/categories")).json()["categories"]
    assert sorted(categories["provider:demo"]) == ["demo", "demo-error", "demo-slow"]
