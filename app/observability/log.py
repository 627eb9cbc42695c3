"""structlog set-up: JSON lines when not on a terminal, pretty console output on one."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

#: Longest string value a log line carries per field: a 500 KB model name or header is logged as a
#: prefix and its length, never whole.
MAX_FIELD_CHARS = 512
_UNCAPPED = frozenset({"exception", "prompt"})  # tracebacks, and prompts only logged when asked for


def cap_fields(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS and key not in _UNCAPPED:
            event[key] = f"{value[:MAX_FIELD_CHARS]}... ({len(value)} chars)"
    return event


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            cap_fields,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # LiteLLM logs through the standard library; keep its chatter out of the request log.
    # Its errors reach the client and our summary line already, so only its criticals are kept.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
