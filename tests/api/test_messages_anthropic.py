"""An Anthropic deployment behind the Messages API: what only Anthropic has (cache_control
marks, thinking blocks with their signatures, ``thinking``, ``top_k``, ``context_management``,
``output_config``, the ``anthropic-beta`` header) reaches the provider, read at a fake Anthropic
provider over real HTTP; its thinking, signatures, tool calls, stop reasons and cache usage come
back to the SDK. On the relay (the default) the client's own body goes to Anthropic; a deployment
with ``fast_path: false`` keeps LiteLLM, as every chat completions request on an Anthropic model does."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import Message

from app.config.settings import settings_from_dict
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_anthropic import (
    ERROR_FIRST_MODEL,
    ERROR_MIDSTREAM_MODEL,
    OVERLOADED_MODEL,
    PARTIAL,
    SIGNATURE,
    SLOW_MODEL,
    STALL_PROMPT,
    TEXT,
    THINKING,
    TOOL_ID,
    TOOL_INPUT,
    TOOL_MODEL,
    USAGE,
    FakeAnthropic,
)
from tests.helpers.fake_provider import DEFAULT_CONTENT
from tests.helpers.sse import read_events

BETAS = "context-management-2025-06-27,interleaved-thinking-2025-05-14"
EPHEMERAL = {"type": "ephemeral"}
ENV = {"MSG_ANTHROPIC_KEY": "sk-ant-test-0123456789"}
#: The public models: on the relay (``claude``) and on LiteLLM (``claude-litellm``, fast_path off).
NATIVE, LITELLM = "claude", "claude-litellm"
BASH = {"name": "Bash", "description": "Run a command.", "input_schema": {"type": "object"}}


@pytest.fixture(scope="module")
def anthropic_fake() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def anthropic_gateway(anthropic_fake: FakeAnthropic, fake_provider: Any) -> Iterator[ServerThread]:
    # LiteLLM's first Anthropic call loads its Anthropic mapping: longer than the suite's short deadlines.
    data = settings_dict(fake_provider.base_url, streaming={"first_token_timeout_s": 30, "idle_timeout_s": 30})

    def deployment(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "litellm_model": f"anthropic/{model}",
            "api_base": anthropic_fake.base_url,
            "api_key_env": "MSG_ANTHROPIC_KEY",
            **extra,
        }

    data["models"]["deployments"] += [
        deployment(NATIVE, "claude-sonnet-4-5"),
        deployment(LITELLM, "claude-sonnet-4-5", fast_path=False),
        deployment("claude-tools", TOOL_MODEL),
        deployment("claude-overloaded", OVERLOADED_MODEL),
        deployment("claude-busy", OVERLOADED_MODEL, fallbacks=[NATIVE]),
        deployment("claude-busy-elsewhere", OVERLOADED_MODEL, fallbacks=["normal"]),  # an OpenAI-wire fallback
        deployment("claude-falls-elsewhere", "claude-sonnet-4-5", fallbacks=["normal"]),  # answers itself
        deployment("claude-error-first", ERROR_FIRST_MODEL),
        deployment("claude-midstream", ERROR_MIDSTREAM_MODEL),
        deployment("claude-slow", SLOW_MODEL),
        deployment("claude-busy-thinker", OVERLOADED_MODEL, fallbacks=["thinker"]),
        # An OpenAI-wire model that takes a reasoning effort (the catalogue's capability).
        {
            "name": "thinker",
            "litellm_model": "openai/normal",
            "api_base": fake_provider.base_url,
            "info": {"capabilities": ["reasoning"]},
        },
    ]
    server = ServerThread(settings_from_dict(data, ENV), environ=ENV).start(timeout=90)
    yield server
    server.stop()


@pytest.fixture
async def client(anthropic_gateway: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=anthropic_gateway.base_url, timeout=20) as c:
        yield c


async def answer(sdk: AsyncAnthropic, asked: dict[str, Any], stream: bool) -> Message:
    if not stream:
        return await sdk.messages.create(**asked)
    async with sdk.messages.stream(**asked) as s:
        return await s.get_final_message()


@pytest.fixture
async def sdk(anthropic_gateway: ServerThread) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=anthropic_gateway.base_url, api_key="unused", max_retries=0, timeout=20) as c:
        yield c


def conversation(model: str = NATIVE) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 2000,
        "system": [{"type": "text", "text": "one"}, {"type": "text", "text": "two", "cache_control": EPHEMERAL}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [
            {
                "name": "Bash",
                "description": "Run a command.",
                "input_schema": {"type": "object"},
                "cache_control": EPHEMERAL,
            }
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": EPHEMERAL}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "earlier thought", "signature": "sig-earlier"},
                    {"type": "text", "text": "ok"},
                ],
            },
            {"role": "user", "content": "again"},
        ],
        "extra_body": {
            "top_k": 7,
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "high"},
        },
        "extra_headers": {"anthropic-beta": BETAS},
    }


def assert_anthropic_controls_arrived(fake: FakeAnthropic) -> None:
    seen = fake.requests()[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == ENV["MSG_ANTHROPIC_KEY"]
    assert set(BETAS.split(",")) <= set(seen.headers["anthropic-beta"].split(","))
    body = seen.body
    assert body["system"] == [
        {"type": "text", "text": "one"},
        {"type": "text", "text": "two", "cache_control": EPHEMERAL},
    ]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "hello", "cache_control": EPHEMERAL}]
    assert body["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "earlier thought",
        "signature": "sig-earlier",
    }
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["top_k"] == 7
    assert body["context_management"] == {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    assert body["output_config"] == {"effort": "high"}
    (tool,) = body["tools"]
    assert tool["name"] == "Bash" and tool["cache_control"] == EPHEMERAL
    assert "extra_body" not in body


@pytest.mark.parametrize("model", [NATIVE, LITELLM])
async def test_stream_keeps_anthropics_controls_and_returns_signed_thinking(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, model: str
) -> None:
    async with sdk.messages.stream(**conversation(model)) as stream:
        final = await stream.get_final_message()
    assert_anthropic_controls_arrived(anthropic_fake)
    assert anthropic_fake.requests()[-1].body["stream"] is True
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == THINKING and final.content[0].signature == SIGNATURE  # type: ignore[union-attr]
    assert final.content[1].text == TEXT  # type: ignore[union-attr]
    assert final.usage.cache_creation_input_tokens == USAGE["cache_creation_input_tokens"]
    assert final.usage.cache_read_input_tokens == USAGE["cache_read_input_tokens"]
    assert final.usage.input_tokens == USAGE["input_tokens"]
    assert final.usage.output_tokens == USAGE["output_tokens"]


@pytest.mark.parametrize("model", [NATIVE, LITELLM])
async def test_json_keeps_anthropics_controls_and_returns_signed_thinking(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, model: str
) -> None:
    message = await sdk.messages.create(**conversation(model))
    assert_anthropic_controls_arrived(anthropic_fake)
    assert message.model == model
    assert message.content[0].type == "thinking" and message.content[0].signature == SIGNATURE
    assert message.content[1].text == TEXT  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == USAGE["cache_read_input_tokens"]
    assert message.usage.cache_creation_input_tokens == USAGE["cache_creation_input_tokens"]
    assert message.usage.input_tokens == USAGE["input_tokens"]


@pytest.mark.parametrize("model", [NATIVE, LITELLM])
async def test_anthropics_own_tools_keep_their_settings(
    client: httpx.AsyncClient, anthropic_fake: FakeAnthropic, model: str
) -> None:
    """A server tool's settings (``max_uses``, ``allowed_domains``, ``user_location``) and a computer
    tool's display reach Anthropic on either path (LiteLLM's mapping reads the computer tool's
    display from OpenAI's function shape)."""
    search = {
        "type": "web_search_20250305",
        "name": "web_search",
        "max_uses": 3,
        "allowed_domains": ["example.com"],
        "user_location": {"type": "approximate", "city": "Paris"},
    }
    computer = {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768}
    body = {
        "model": model,
        "max_tokens": 100,
        "tools": [search, computer],
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    sent = {tool["name"]: tool for tool in anthropic_fake.requests()[-1].body["tools"]}
    assert sent["web_search"] == search
    assert {k: sent["computer"][k] for k in ("type", "display_width_px", "display_height_px")} == {
        "type": "computer_20250124",
        "display_width_px": 1024,
        "display_height_px": 768,
    }


@pytest.mark.parametrize("model", [NATIVE, LITELLM])
@pytest.mark.parametrize("stream", [False, True])
async def test_web_searches_anthropic_ran_are_charged_at_their_price(
    client: httpx.AsyncClient, anthropic_gateway: ServerThread, model: str, stream: bool
) -> None:
    """Anthropic bills each search its web search tool runs apart from the tokens ($0.01 for this
    model in LiteLLM's metadata): the call's spend includes them, and the client's usage shows them."""
    spend = anthropic_gateway.app.state.metrics.spend

    def spent() -> float:
        return sum(usd for (_key, name), usd in spend.items() if name == model)

    async def charge(body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        before = spent()
        response = await client.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
        assert response.status_code == 200, response.text
        if stream:
            deltas = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
            usage = next(d["usage"] for d in deltas if d["type"] == "message_delta")
        else:
            usage = response.json()["usage"]
        deadline = time.monotonic() + 5
        while spent() == before:  # settled as the call closes, just after its last byte
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return spent() - before, usage

    asked: dict[str, Any] = {
        "model": model,
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    plain, plain_usage = await charge(asked)
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    searched, usage = await charge({**asked, "tools": [search]})
    assert searched - plain == pytest.approx(0.01)
    assert usage["server_tool_use"] == {"web_search_requests": 1}
    assert "server_tool_use" not in plain_usage


@pytest.fixture(scope="module")
def budget_gateway(anthropic_fake: FakeAnthropic, fake_provider: Any) -> Iterator[ServerThread]:
    data = settings_dict(fake_provider.base_url)
    data["models"]["deployments"] += [
        {
            "name": NATIVE,
            "litellm_model": "anthropic/claude-sonnet-4-5",
            "api_base": anthropic_fake.base_url,
            "api_key_env": "MSG_ANTHROPIC_KEY",
        }
    ]
    # Five cents: a short answer's tokens fit many times over, ten searches at a cent each do not.
    data["keys"] = [{"name": "searcher", "key_env": "MSG_SEARCHER", "budget_usd": 0.05, "budget_window": "total"}]
    environ = {**ENV, "MSG_SEARCHER": SEARCHER}
    server = ServerThread(settings_from_dict(data, environ), environ=environ).start(timeout=90)
    yield server
    server.stop()


SEARCHER = "sk-searcher-0123456789abcdef"


async def test_admission_reserves_the_searches_a_request_allows(budget_gateway: ServerThread) -> None:
    """A call may run as many searches as its web search tool's ``max_uses`` (ten when it names none),
    each billed apart: admission reserves them at their price as it reserves output tokens, so calls
    in flight cannot search past the key's budget together."""
    headers = {"x-api-key": SEARCHER, "anthropic-version": "2023-06-01"}
    asked: dict[str, Any] = {"model": NATIVE, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    search = {"type": "web_search_20250305", "name": "web_search"}
    held = {**asked, "stream": True, "messages": [{"role": "user", "content": STALL_PROMPT}]}
    async with httpx.AsyncClient(base_url=budget_gateway.base_url, timeout=20) as http:
        for tools, status in (([{**search, "max_uses": 5}], 429), ([search], 429), ([{**search, "max_uses": 1}], 200)):
            # Held in flight (Anthropic stalls): five searches are five cents, the whole budget.
            async with http.stream("POST", "/v1/messages", json={**held, "tools": tools}, headers=headers) as first:
                assert first.status_code == 200
                await anext(first.aiter_lines())
                other = await http.post("/v1/messages", json=asked, headers=headers)
                assert other.status_code == status, (tools, other.text)
                if status == 429:
                    assert other.json()["error"]["type"] == "rate_limit_error"
            await _settled(budget_gateway, "searcher")
        # A max_uses no schema bounds: a reservation past the budget, not a number too large to price.
        huge = {**asked, "tools": [{**search, "max_uses": 10**400}]}
        response = await http.post("/v1/messages", json=huge, headers=headers)
        assert response.status_code == 200, response.text  # alone in flight: admitted, as ever
        await _settled(budget_gateway, "searcher")


async def _settled(server: ServerThread, key: str) -> None:
    backend = server.app.state.services.limiter._backend
    deadline = time.monotonic() + 5
    while backend.in_flight(key) != (0, 0.0, 0):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_stop_sequence_anthropic_reports_reaches_the_client(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, stream: bool
) -> None:
    asked: Any = {"model": NATIVE, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    asked["stop_sequences"] = ["END"]
    message = await answer(sdk, asked, stream)
    assert anthropic_fake.requests()[-1].body["stop_sequences"] == ["END"]
    assert message.content[-1].text == TEXT  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


async def test_on_litellm_the_stop_sequence_is_reported_as_end_turn(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic
) -> None:
    """LiteLLM reports Anthropic's ``stop_sequence`` as a plain ``stop`` without the sequence: a
    deployment with the fast path off answers ``end_turn`` (docs/messages.md) rather than guess."""
    asked: Any = {"model": LITELLM, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    asked["stop_sequences"] = ["END"]
    message = await sdk.messages.create(**asked)
    assert anthropic_fake.requests()[-1].body["stop_sequences"] == ["END"]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


async def test_the_relay_sends_the_clients_own_body_and_anthropic_headers(
    client: httpx.AsyncClient, anthropic_fake: FakeAnthropic
) -> None:
    body: dict[str, Any] = {
        "model": NATIVE,
        "max_tokens": 32000,
        "system": [{"type": "text", "text": "one", "cache_control": EPHEMERAL}],
        "thinking": {"type": "adaptive", "display": "omitted"},
        "tools": [{**BASH, "defer_loading": True}, {"type": "web_search_20250305", "name": "web_search"}],
        "metadata": {"user_id": '{"session": "abc"}'},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": EPHEMERAL}]}],
        "a_control_added_later": {"any": ["shape"]},
        "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}],
    }
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": BETAS}
    response = await client.post("/v1/messages", json=body, headers={"x-api-key": "unused", **headers})
    assert response.status_code == 200, response.text
    seen = anthropic_fake.requests()[-1]
    sent = {k: v for k, v in body.items() if k != "mcp_servers"}  # never passed on (docs/messages.md)
    assert seen.body == {**sent, "model": "claude-sonnet-4-5", "stream": False}
    assert seen.headers["anthropic-beta"] == BETAS
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["x-api-key"] == ENV["MSG_ANTHROPIC_KEY"]
    assert seen.headers["accept-encoding"] == "identity"
    # A client that names no version: Anthropic's SDKs' default.
    del body["mcp_servers"]
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    assert anthropic_fake.requests()[-1].headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in anthropic_fake.requests()[-1].headers


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_use_round_trip(sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, stream: bool) -> None:
    asked: Any = {
        "model": "claude-tools",
        "max_tokens": 100,
        "tools": [BASH],
        "messages": [{"role": "user", "content": "Say hi with the shell."}],
    }
    first = await answer(sdk, asked, stream)
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == (TOOL_ID, "Bash", TOOL_INPUT)
    asked["messages"] += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "hi"}]},
    ]
    second = await answer(sdk, asked, stream)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "The command said: hi"  # type: ignore[union-attr]
    sent = anthropic_fake.requests()[-1].body["messages"]
    assert sent[1]["content"][1] == {"type": "tool_use", "id": TOOL_ID, "name": "Bash", "input": TOOL_INPUT}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_overloaded_anthropic_is_the_sdks_overloaded_error(sdk: AsyncAnthropic, stream: bool) -> None:
    """A 529 is retryable: with nothing left to try, the client gets Anthropic's 529 again."""
    asked = {"model": "claude-overloaded", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.OverloadedError) as caught:
        await answer(sdk, asked, stream)
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_overloaded_anthropic_falls_back(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, stream: bool
) -> None:
    before = len(anthropic_fake.requests())
    asked = {"model": "claude-busy", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    message = await answer(sdk, asked, stream)
    assert message.content[-1].text == TEXT  # type: ignore[union-attr]
    assert message.model == "claude-busy"
    tried = [seen.body["model"] for seen in anthropic_fake.requests()[before:]]
    assert tried == [OVERLOADED_MODEL, "claude-sonnet-4-5"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallback_to_another_provider_gets_no_anthropic_controls(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, fake_provider: Any, stream: bool
) -> None:
    """Claude Code's controls (thinking, cache marks, context_management, ...) go to Anthropic; when
    Anthropic is overloaded and the fallback is an OpenAI-wire model, it gets the conversation
    without them (it would refuse them with a 400, which ends the call)."""
    before = len(anthropic_fake.requests())
    message = await answer(sdk, conversation("claude-busy-elsewhere"), stream)
    assert message.content[-1].text == "".join(DEFAULT_CONTENT)  # type: ignore[union-attr]
    assert [seen.body["model"] for seen in anthropic_fake.requests()[before:]] == [OVERLOADED_MODEL]
    sent = fake_provider.requests[-1].body
    assert sent["model"] == "normal"
    for field in ("thinking", "top_k", "context_management", "output_config", "thinking_blocks", "reasoning_effort"):
        assert field not in sent, field
    assert "cache_control" not in json.dumps(sent) and "earlier thought" not in json.dumps(sent)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["Bash"]
    assert "anthropic-beta" not in fake_provider.requests[-1].headers  # Anthropic's header stays with it


async def test_a_fallback_that_reasons_gets_the_thinking_as_an_effort(sdk: AsyncAnthropic, fake_provider: Any) -> None:
    """Thinking with a 1024-token budget, Anthropic overloaded, the fallback a reasoning model: its
    translation carries the effort a direct call to it would (``low``), not none."""
    message = await sdk.messages.create(**conversation("claude-busy-thinker"))
    assert message.content[-1].text == "".join(DEFAULT_CONTENT)  # type: ignore[union-attr]
    sent = fake_provider.requests[-1].body
    assert sent["reasoning_effort"] == "low" and "thinking" not in sent


async def test_a_pdf_goes_to_anthropic_and_is_refused_only_by_a_fallback_that_cannot_take_it(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, fake_provider: Any
) -> None:
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}
    messages = [{"role": "user", "content": [pdf, {"type": "text", "text": "sum it up"}]}]
    message = await sdk.messages.create(model="claude-falls-elsewhere", max_tokens=10, messages=messages)
    assert message.content[-1].text == TEXT  # type: ignore[union-attr]
    calls = len(fake_provider.requests)
    with pytest.raises(anthropic.BadRequestError) as refused:  # Anthropic overloaded; the fallback takes no PDF
        await sdk.messages.create(model="claude-busy-elsewhere", max_tokens=10, messages=messages)
    assert "only text documents" in str(refused.value)
    assert len(fake_provider.requests) == calls


@pytest.mark.parametrize("model", [NATIVE, LITELLM])
async def test_a_pdf_reaches_an_anthropic_model(sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic, model: str) -> None:
    """A PDF is refused only where the provider cannot take it: Anthropic can (on the relay the
    client's own block goes; through LiteLLM a file part that it makes a document of)."""
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}
    asked = {
        "model": model,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [pdf, {"type": "text", "text": "sum it up"}]}],
    }
    message = await sdk.messages.create(**asked)
    assert message.content[-1].text == TEXT  # type: ignore[union-attr]
    block = anthropic_fake.requests()[-1].body["messages"][0]["content"][0]
    assert block["type"] == "document" and block["source"]["data"] == "JVBERi0xLjQK"


async def test_an_error_event_ends_the_stream_in_band(client: httpx.AsyncClient) -> None:
    """Anthropic's error event after its ``message_start`` (which the client has been given): the
    stream ends with Anthropic's error event, of the type Anthropic gave (docs/messages.md)."""
    body: dict[str, Any] = {"max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.stream("POST", "/v1/messages", json={**body, "model": "claude-midstream"}) as response:
        assert response.status_code == 200
        events = [e for e in await read_events(response) if e.data is not None]
    names = [e.event for e in events]
    assert names == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[2].json()["delta"] == {"type": "text_delta", "text": PARTIAL}
    assert events[3].json()["error"]["type"] == "api_error"
    async with client.stream("POST", "/v1/messages", json={**body, "model": "claude-error-first"}) as response:
        assert response.status_code == 200
        events = [e for e in await read_events(response) if e.data is not None]
    assert [e.event for e in events] == ["message_start", "error"]
    assert events[1].json()["error"]["type"] == "overloaded_error"


async def test_chat_completions_on_an_anthropic_model_takes_litellm(
    client: httpx.AsyncClient, anthropic_fake: FakeAnthropic
) -> None:
    body = {"model": NATIVE, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], "stop": ["END"]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == TEXT
    seen = anthropic_fake.requests()[-1]
    # LiteLLM's translation: the chat request's ``stop`` as Anthropic's ``stop_sequences``.
    assert seen.body["stop_sequences"] == ["END"] and seen.body["model"] == "claude-sonnet-4-5"


def test_which_path_each_deployment_takes(anthropic_gateway: ServerThread) -> None:
    provider = anthropic_gateway.app.state.services.provider
    assert provider.path_of(f"{NATIVE}-1", messages=True) == "fast"
    assert provider.path_of(f"{NATIVE}-1") == "full"  # chat completions: LiteLLM translates
    assert provider.path_of(f"{LITELLM}-1", messages=True) == "full"  # fast_path = false


@pytest.fixture(scope="module")
def cached_gateway(anthropic_fake: FakeAnthropic, fake_provider: Any) -> Iterator[ServerThread]:
    data = settings_dict(fake_provider.base_url, cache={"enabled": True})
    data["models"]["deployments"] += [
        {
            "name": NATIVE,
            "litellm_model": "anthropic/claude-sonnet-4-5",
            "api_base": anthropic_fake.base_url,
            "api_key_env": "MSG_ANTHROPIC_KEY",
        }
    ]
    server = ServerThread(settings_from_dict(data, ENV), environ=ENV).start(timeout=90)
    yield server
    server.stop()


async def test_the_cache_keys_on_every_field_anthropic_gets(
    cached_gateway: ServerThread, anthropic_fake: FakeAnthropic
) -> None:
    """On the relay Anthropic gets the client's whole body, so a control the chat translation does
    not name (here a future one) still tells two requests apart; the same body again is a hit."""
    asked: dict[str, Any] = {"model": NATIVE, "max_tokens": 50, "messages": [{"role": "user", "content": "cache me"}]}
    headers = {"anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=cached_gateway.base_url, timeout=20) as c:
        before = len(anthropic_fake.requests())
        first = await c.post("/v1/messages", json=asked, headers=headers)
        other = await c.post("/v1/messages", json={**asked, "future_control": {"level": 2}}, headers=headers)
        again = await c.post("/v1/messages", json=asked, headers=headers)
    assert [r.status_code for r in (first, other, again)] == [200, 200, 200]
    assert [r.headers["x-cache"] for r in (first, other, again)] == ["MISS", "MISS", "HIT"]
    assert len(anthropic_fake.requests()) - before == 2
    assert anthropic_fake.requests()[-1].body["future_control"] == {"level": 2}
    assert again.json()["content"] == first.json()["content"]


async def test_a_client_that_leaves_mid_stream_ends_the_call_to_anthropic(
    client: httpx.AsyncClient, anthropic_fake: FakeAnthropic
) -> None:
    """The relay's Anthropic call is the client's: when the client goes, the gateway closes its
    connection to Anthropic at once, rather than leave the answer running (and billed)."""
    anthropic_fake.left_mid_stream.clear()
    asked = {"model": "claude-slow", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.stream("POST", "/v1/messages", json=asked, headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200
        seen = b""
        async for piece in r.aiter_bytes():
            seen += piece
            if b"thinking_delta" in seen:
                break  # leaving the block closes the connection mid-stream
    assert b"event: message_start" in seen
    assert await asyncio.to_thread(anthropic_fake.left_mid_stream.wait, 5), "the gateway kept Anthropic's call open"
