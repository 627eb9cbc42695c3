"""``count_tokens`` for a Messages request: counted here, never by a provider call.

LiteLLM's counter picks the model's own tokenizer where it ships one (and a GPT tokenizer
otherwise); the count covers the translated conversation and its tools, which is what the model
is given. Blocking CPU work: callers run it off the event loop.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.providers.litellm_setup import import_litellm


def count_input_tokens(litellm_model: str, chat_body: dict[str, Any]) -> int:
    litellm = import_litellm()
    model = litellm_model.split("/", 1)[1] if "/" in litellm_model else litellm_model
    try:
        # use_default_image_token_count: an image by URL counts as a fixed number of tokens; without
        # it LiteLLM downloads the URL to measure the image, and the gateway never fetches a client's URL.
        count = litellm.token_counter(
            model=model,
            messages=chat_body["messages"],
            tools=chat_body.get("tools"),
            use_default_image_token_count=True,
        )
        return int(count)
    except Exception:
        # A conversation LiteLLM's counter cannot walk (a part type it does not know): the
        # limiter's estimate, about four bytes a token, rather than an error for a count.
        return len(msgspec.json.encode(chat_body["messages"])) // 4 + 1
