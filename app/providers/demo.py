"""The built-in demo models: a LiteLLM custom provider that streams deterministic replies.

``demo/demo`` answers in markdown, ``demo/slow`` slowly and at length, ``demo/error`` fails as a
provider does (``app/providers/demo_replies.py`` has the words and the rules).

It goes through the same Router and stream pipeline as a real provider, so the default
configuration exercises the whole gateway with no key and no network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from app.providers.demo_replies import (
    error_plan,
    error_preamble,
    markdown_reply,
    prompt_tokens,
    slow_reply,
    tokens_of,
)
from app.providers.litellm_setup import import_litellm

litellm = import_litellm()

from litellm import CustomLLM  # noqa: E402
from litellm.types.utils import GenericStreamingChunk, ModelResponse  # noqa: E402

PROVIDER = "demo"
TOKEN_INTERVAL_S = 0.02
#: demo-slow's pace: its answer takes about 20 s, time to press Stop or reload, and less than a drain (30 s).
SLOW_INTERVAL_S = 0.08
#: What demo-error's 429 asks a client to wait.
ERROR_RETRY_AFTER_S = 2


def _variant(kwargs: dict[str, Any]) -> str:
    # LiteLLM hands over the model without its "demo/" prefix: "demo/demo-slow" arrives as "demo-slow"
    # (the name its chunks then carry), and "demo/slow" as "slow".
    return str(kwargs.get("model") or "demo").rsplit("/", 1)[-1].removeprefix("demo-")


# Messages start as LiteLLM's own providers' do ("<Provider>Exception - "), which is where the gateway
# takes the provider's words from (app/providers/translate.py).
def _rate_limited(model: str) -> Exception:
    return litellm.RateLimitError(  # type: ignore[attr-defined]
        "DemoException - demo-error: this is how a provider over its rate limit answers (ask without the word "
        "'midway' to fail here, with it to fail after the first words)",
        llm_provider=PROVIDER,
        model=model,
        headers={"retry-after": str(ERROR_RETRY_AFTER_S)},
    )


def _broke_off(model: str) -> Exception:
    return litellm.APIConnectionError(  # type: ignore[attr-defined]
        "DemoException - demo-error: the provider's connection broke off mid-answer",
        llm_provider=PROVIDER,
        model=model,
    )


def demo_reply(messages: list[Any], variant: str = "demo") -> list[str]:
    """The tokens a demo model streams (demo-error's: the ones before it fails)."""
    if variant == "slow":
        return tokens_of(slow_reply(messages))
    if variant == "error":
        return error_preamble() if error_plan(messages) == "midway" else []
    return tokens_of(markdown_reply(messages))


class DemoLLM(CustomLLM):
    def __init__(self, interval_s: float = TOKEN_INTERVAL_S, slow_interval_s: float = SLOW_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.slow_interval_s = slow_interval_s

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        variant = _variant(kwargs)
        messages = kwargs.get("messages") or []
        if variant == "error":
            raise _broke_off(variant) if error_plan(messages) == "midway" else _rate_limited(variant)
        tokens = demo_reply(messages, variant)
        response: ModelResponse = kwargs["model_response"]
        response.choices[0].message.content = "".join(tokens)  # type: ignore[union-attr]
        response.choices[0].finish_reason = "stop"
        response.model = kwargs.get("model", "demo")
        response.usage = litellm.Usage(  # type: ignore[attr-defined]
            prompt_tokens=prompt_tokens(messages),
            completion_tokens=len(tokens),
            total_tokens=prompt_tokens(messages) + len(tokens),
        )
        response.created = int(time.time())
        return response

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:  # pragma: no cover - sync path unused
        raise NotImplementedError("the gateway only uses the async path")

    async def astreaming(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        variant = _variant(kwargs)
        messages = kwargs.get("messages") or []
        tokens = demo_reply(messages, variant)
        if variant == "error" and not tokens:
            raise _rate_limited(variant)
        interval = self.slow_interval_s if variant == "slow" else self.interval_s
        prompt = prompt_tokens(messages)
        for i, token in enumerate(tokens):
            await asyncio.sleep(interval)
            last = i == len(tokens) - 1 and variant != "error"
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
        if variant == "error":
            await asyncio.sleep(interval)
            raise _broke_off(variant)


def register_demo_provider(interval_s: float = TOKEN_INTERVAL_S, slow_interval_s: float = SLOW_INTERVAL_S) -> None:
    """Register (or re-register) the demo handler in LiteLLM's provider map."""
    litellm.custom_provider_map = [  # type: ignore[attr-defined]
        p
        for p in litellm.custom_provider_map
        if p["provider"] != PROVIDER  # type: ignore[attr-defined]
    ]
    litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": DemoLLM(interval_s, slow_interval_s)})
    from litellm.utils import custom_llm_setup

    custom_llm_setup()
