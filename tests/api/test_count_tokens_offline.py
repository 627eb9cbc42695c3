"""Counting a Messages request's tokens never reaches the internet, whatever the model's name."""

from __future__ import annotations

import asyncio

import pytest

from app.api.messages.tokens import count_input_tokens


@pytest.mark.parametrize("litellm_model", ["openai/meta-llama/Llama-3-8b", "hosted_vllm/deepseek-ai/DeepSeek-V3"])
async def test_a_model_with_a_hub_tokenizer_is_counted_on_the_machine(
    litellm_model: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # LiteLLM's counter fetches these names' tokenizers from huggingface.co; where it cannot reach it
    # (this machine), it retried for ~23 s, printing each try.
    body = {"messages": [{"role": "user", "content": "hello there, how are you?"}]}
    counted = await asyncio.wait_for(asyncio.to_thread(count_input_tokens, litellm_model, body), 10)
    assert counted > 5
    assert "huggingface" not in capfd.readouterr().err
