"""The built-in ``demo`` model: a LiteLLM custom provider that streams a deterministic reply.

It goes through the same Router and stream pipeline as a real provider, so the default
configuration exercises the whole gateway with no key and no network.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from app.providers.litellm_setup import import_litellm

litellm = import_litellm()

from litellm import CustomLLM  # noqa: E402
from litellm.types.utils import GenericStreamingChunk, ModelResponse  # noqa: E402

PROVIDER = "demo"
TOKEN_INTERVAL_S = 0.02
_TOKEN_RE = re.compile(r"\s*\S+")


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def demo_reply(messages: list[Any]) -> list[str]:
    said = " ".join(_last_user_text(messages).split())[:200] or "nothing"
    text = (
        "Hello! I am the demo model of the chat gateway. I stream one token at a time, "
        f"so you can watch the relay work without any API key. You said: {said}"
    )
    return _TOKEN_RE.findall(text)


class DemoLLM(CustomLLM):
    def __init__(self, interval_s: float = TOKEN_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        tokens = demo_reply(kwargs.get("messages") or [])
        response: ModelResponse = kwargs["model_response"]
        response.choices[0].message.content = "".join(tokens)  # type: ignore[union-attr]
        response.choices[0].finish_reason = "stop"
        response.model = kwargs.get("model", "demo")
        response.usage = litellm.Usage(  # type: ignore[attr-defined]
            prompt_tokens=_prompt_tokens(kwargs),
            completion_tokens=len(tokens),
            total_tokens=_prompt_tokens(kwargs) + len(tokens),
        )
        response.created = int(time.time())
        return response

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:  # pragma: no cover - sync path unused
        raise NotImplementedError("the gateway only uses the async path")

    async def astreaming(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        tokens = demo_reply(kwargs.get("messages") or [])
        prompt = _prompt_tokens(kwargs)
        for i, token in enumerate(tokens):
            await asyncio.sleep(self.interval_s)
            last = i == len(tokens) - 1
            yield GenericStreamingChunk(
                text=token,
                tool_use=None,
                is_finished=last,
                finish_reason="stop" if last else "",
                usage={"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
                if last
                else None,
                index=0,
            )


def _prompt_tokens(kwargs: dict[str, Any]) -> int:
    return sum(len(_last_user_text([m]).split()) for m in kwargs.get("messages") or []) or 1


def register_demo_provider(interval_s: float = TOKEN_INTERVAL_S) -> None:
    """Register (or re-register) the demo handler in LiteLLM's provider map."""
    litellm.custom_provider_map = [  # type: ignore[attr-defined]
        p
        for p in litellm.custom_provider_map
        if p["provider"] != PROVIDER  # type: ignore[attr-defined]
    ]
    litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": DemoLLM(interval_s)})
    from litellm.utils import custom_llm_setup

    custom_llm_setup()
