"""The built-in demo models served in the gateway's own process, without LiteLLM.

``demo/demo`` answers in markdown, ``demo/demo-slow`` slowly and at length, ``demo/demo-error`` fails
as a provider does (``demo_replies.py`` has the words and the rules). The chunks are OpenAI's
``chat.completion.chunk`` objects, read through the same ``read_chunk`` as a real provider's, so the
default configuration exercises the whole stream pipeline with no key, no network, and no LiteLLM
import (which is most of a worker's start-up time and memory).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion, usage_of
from app.domain.errors import RateLimited, UpstreamUnavailable
from app.providers.chunks import read_chunk
from app.providers.demo_replies import (
    error_plan,
    error_preamble,
    markdown_reply,
    prompt_tokens,
    slow_reply,
    tokens_of,
)

PREFIX = "demo/"
TOKEN_INTERVAL_S = 0.02
#: demo-slow's pace: its answer takes about 20 s, time to press Stop or reload, and less than a drain (30 s).
SLOW_INTERVAL_S = 0.08
#: What demo-error's 429 asks a client to wait.
ERROR_RETRY_AFTER_S = 2
_encode = msgspec.json.encode
_ids = itertools.count(1)


def is_demo(litellm_model: str) -> bool:
    return litellm_model.startswith(PREFIX)


def _variant(model: str) -> str:
    """``demo/demo-slow`` -> ``slow``; ``demo/demo`` -> ``demo``."""
    return model.removeprefix(PREFIX).removeprefix("demo-")


def _rate_limited() -> RateLimited:
    return RateLimited(
        "demo-error: this is how a provider over its rate limit answers (ask without the word "
        "'midway' to fail here, with it to fail after the first words)",
        retry_after=ERROR_RETRY_AFTER_S,
    )


def _broke_off() -> UpstreamUnavailable:
    return UpstreamUnavailable("demo-error: the provider's connection broke off mid-answer")


def demo_reply(messages: list[Any], variant: str = "demo") -> list[str]:
    """The tokens a demo model streams (demo-error's: the ones before it fails)."""
    if variant == "slow":
        return tokens_of(slow_reply(messages))
    if variant == "error":
        return error_preamble() if error_plan(messages) == "midway" else []
    return tokens_of(markdown_reply(messages))


class DemoProvider:
    """The ``Provider`` of every ``demo/...`` deployment (by deployment id)."""

    def __init__(
        self,
        models: Mapping[str, str],
        interval_s: float = TOKEN_INTERVAL_S,
        slow_interval_s: float = SLOW_INTERVAL_S,
    ) -> None:
        self._models = dict(models)  # deployment id -> "demo/<variant>"
        self.interval_s = interval_s
        self.slow_interval_s = slow_interval_s

    def serves(self, deployment: str) -> bool:
        return deployment in self._models

    def _model(self, deployment: str) -> tuple[str, str]:
        model = self._models[deployment].removeprefix(PREFIX)
        return model, _variant(self._models[deployment])

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        model, variant = self._model(deployment)
        messages = request.body.get("messages") or []
        if variant == "error":
            raise _broke_off() if error_plan(messages) == "midway" else _rate_limited()
        tokens = demo_reply(messages, variant)
        prompt = prompt_tokens(messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
        raw = _encode(
            {
                "id": f"chatcmpl-demo-{next(_ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
        )
        return Completion(raw=raw, usage=usage_of(usage))

    async def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        model, variant = self._model(deployment)
        messages = request.body.get("messages") or []
        tokens = demo_reply(messages, variant)
        if variant == "error" and not tokens:
            raise _rate_limited()
        interval = self.slow_interval_s if variant == "slow" else self.interval_s
        base = {"id": f"chatcmpl-demo-{next(_ids)}", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = model

        def chunk(delta: dict[str, Any], finish: str | None = None) -> Chunk:
            return read_chunk(_encode({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))

        for i, token in enumerate(tokens):
            await asyncio.sleep(interval)
            yield chunk({"role": "assistant", "content": token} if i == 0 else {"content": token})
        if variant == "error":
            await asyncio.sleep(interval)
            raise _broke_off()
        yield chunk({}, "stop")
        prompt = prompt_tokens(messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
        yield read_chunk(_encode({**base, "choices": [], "usage": usage}))

    async def aclose(self) -> None:
        return None
