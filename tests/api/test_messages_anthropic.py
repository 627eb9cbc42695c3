"""An Anthropic deployment behind the Messages API: what only Anthropic has (cache_control
marks, thinking blocks with their signatures, ``thinking``, ``top_k``, ``context_management``,
``output_config``, the ``anthropic-beta`` header) reaches the provider, read at a fake Anthropic
provider over real HTTP; its thinking, signatures and cache usage come back to the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from anthropic import AsyncAnthropic

from app.config.settings import settings_from_dict
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_anthropic import SIGNATURE, TEXT, THINKING, USAGE, FakeAnthropic

BETAS = "context-management-2025-06-27,interleaved-thinking-2025-05-14"
EPHEMERAL = {"type": "ephemeral"}
ENV = {"MSG_ANTHROPIC_KEY": "sk-ant-test-0123456789"}


@pytest.fixture(scope="module")
def anthropic_fake() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def anthropic_gateway(anthropic_fake: FakeAnthropic, fake_provider: Any) -> Iterator[ServerThread]:
    # LiteLLM's first Anthropic call loads its Anthropic mapping: longer than the suite's short deadlines.
    data = settings_dict(fake_provider.base_url, streaming={"first_token_timeout_s": 30, "idle_timeout_s": 30})
    data["models"]["deployments"].append(
        {
            "name": "claude",
            "litellm_model": "anthropic/claude-sonnet-4-5",
            "api_base": anthropic_fake.base_url,
            "api_key_env": "MSG_ANTHROPIC_KEY",
        }
    )
    server = ServerThread(settings_from_dict(data, ENV), environ=ENV).start(timeout=90)
    yield server
    server.stop()


@pytest.fixture
async def sdk(anthropic_gateway: ServerThread) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=anthropic_gateway.base_url, api_key="unused", max_retries=0, timeout=20) as c:
        yield c


def conversation() -> dict[str, Any]:
    return {
        "model": "claude",
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


async def test_stream_keeps_anthropics_controls_and_returns_signed_thinking(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic
) -> None:
    async with sdk.messages.stream(**conversation()) as stream:
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


async def test_json_keeps_anthropics_controls_and_returns_signed_thinking(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic
) -> None:
    message = await sdk.messages.create(**conversation())
    assert_anthropic_controls_arrived(anthropic_fake)
    assert message.model == "claude"
    assert message.content[0].type == "thinking" and message.content[0].signature == SIGNATURE
    assert message.content[1].text == TEXT  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == USAGE["cache_read_input_tokens"]


async def test_a_stop_sequence_anthropic_reports_is_lost_in_litellm(
    sdk: AsyncAnthropic, anthropic_fake: FakeAnthropic
) -> None:
    """Anthropic says which stop sequence matched; LiteLLM, which carries the call, reports it as a plain
    ``stop`` without the sequence, so the gateway answers ``end_turn`` (docs/messages.md) rather than guess."""
    asked: Any = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    asked["stop_sequences"] = ["END"]
    message = await sdk.messages.create(**asked)
    async with sdk.messages.stream(**asked) as stream:
        final = await stream.get_final_message()
    assert anthropic_fake.requests()[-1].body["stop_sequences"] == ["END"]
    for answer in (message, final):
        assert answer.content[-1].text == TEXT  # type: ignore[union-attr]
        assert (answer.stop_reason, answer.stop_sequence) == ("end_turn", None)
