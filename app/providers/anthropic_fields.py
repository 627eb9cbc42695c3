"""Anthropic request fields that LiteLLM's Anthropic mapping must see as request parameters.

Given as ``extra_body``, LiteLLM's Anthropic mapping sends them nested under an ``extra_body`` key,
which Anthropic refuses; as parameters it writes them into Anthropic's body. What an Anthropic
deployment gets beyond the chat request's own fields (the Messages API passes these on).
"""

from __future__ import annotations

from typing import Final

ANTHROPIC_BODY_FIELDS: Final = frozenset(
    {"thinking", "top_k", "context_management", "output_config", "service_tier", "inference_geo"}
)
