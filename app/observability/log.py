"""structlog set-up: JSON lines when not on a terminal, pretty console output on one."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import IO, Any

import msgspec
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


def _unencodable(value: Any) -> str:
    return repr(value)  # what structlog's own JSON renderer falls back to


_JSON_LINE = msgspec.json.Encoder(enc_hook=_unencodable)


def render_json(event: Any, **_kwargs: Any) -> str:
    """``JSONRenderer``'s serializer: msgspec instead of ``json.dumps``, which builds an encoder per
    call (4.6 against 0.6 us for the access line, ``timeit``). Compact separators, UTF-8 as is;
    values JSON cannot hold are written as their ``repr``, as structlog does."""
    return _JSON_LINE.encode(event).decode()


class UtcStamper:
    """``timestamp``: the time in ISO 8601, UTC, to the microsecond (``2026-12-06T16:56:36.123456Z``),
    as ``TimeStamper(fmt="iso", utc=True)`` writes it (which leaves out a zero fraction) without a
    ``datetime`` per line: the date and time of day are formatted once a second."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        # The second and its text as one object: a line logged from another thread meanwhile reads
        # either the old pair or the new one, never one's second with the other's text.
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second, prefix = self._second
        if int(now) != second:
            second = int(now)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        event["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


#: Writes one ``info`` line: the event's name and its fields (the dict is the writer's to change).
InfoLine = Callable[[str, dict[str, Any]], None]


def configure_logging(level: str = "info", *, json: bool | None = None) -> InfoLine:
    """Configure structlog; return the writer of the access line (``info_line``) for this set-up."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=render_json)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=True)
    )
    stamper = UtcStamper()
    # What makes a line of an event: the gateway's own lines and the standard library's records alike.
    rendering: list[structlog.typing.Processor] = [structlog.processors.format_exc_info, cap_fields, renderer]
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamper,
        *rendering,
    ]
    threshold = logging.getLevelName(level.upper())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # One ``write`` per line (``print`` makes two: the text, then the newline): a line another
        # thread writes to stderr between them (the ready banner) would be glued to this one.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Records of the standard library's logging (asyncio's "Task exception was never retrieved",
    # uvicorn's "Exception in ASGI application", any library's warning) as the same lines: one JSON
    # object each, a traceback in its ``exception`` field, written in one write. Libraries' info
    # and debug records are chatter, not the request log.
    stdlib = logging.StreamHandler(sys.stderr)
    stdlib.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamper],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [stdlib]
    root.setLevel(max(threshold, logging.WARNING))
    # LiteLLM logs through the standard library; keep its chatter out of the request log.
    # Its errors reach the client and our summary line already, so only its criticals are kept.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return info_line(processors, sys.stderr, enabled=threshold <= logging.INFO)


def configure_supervisor_logging(level: str) -> None:
    """Logging for the parent of several workers (uvicorn's supervisor), which serves no request.

    Its records ("Child process [N] died", "Received SIGTERM, exiting.") come out as JSON lines like
    the workers' (without a root handler of its own, Python's last-resort handler prints them as
    bare text), and at the configured level rather than warning: a worker's death and its replacement are rare
    and what an operator of this process wants in the log. Called after uvicorn's Config is built,
    which sets its loggers to the level it was given; the workers set theirs again.
    """
    configure_logging(level)
    logging.getLogger("uvicorn.error").setLevel(logging.getLevelName(level.upper()))


def info_line(processors: Sequence[Any], file: IO[str], *, enabled: bool = True) -> InfoLine:
    """A writer of ``info`` lines that runs ``processors`` (the ones structlog was given) itself.

    The same line a structlog logger writes, without its per-call wrapping (the bound logger's
    level method, its event processing, the print logger's lock and ``print``): for the one line
    every request writes, that wrapping cost about as much as rendering the line (``timeit``:
    30 us against 20 us a line; loadtests/README.md). One ``write`` per line, flushed at once, and
    no lock: the access line is only ever written from the event loop's thread.
    """
    if not enabled:
        return lambda _event, _fields: None
    chain = tuple(processors)

    def write(event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        line: Any = fields
        for processor in chain:
            line = processor(None, "info", line)
        file.write(f"{line}\n")
        file.flush()

    return write
