"""The access line's writer (``configure_logging``'s return) writes what a structlog logger writes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from app.observability.log import MAX_FIELD_CHARS, configure_logging, info_line


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    config = structlog.get_config()
    yield
    structlog.configure(**config)
    structlog.contextvars.clear_contextvars()


def _fields() -> dict[str, object]:
    return {"method": "POST", "route": "/v1/embeddings", "status": 200, "duration_ms": 1.5, "model": "m" * 600}


def test_the_line_is_the_one_structlog_writes(restore_structlog: None) -> None:
    configure_logging("info", json=True)
    processors = structlog.get_config()["processors"]
    ours, theirs = io.StringIO(), io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=theirs))
    structlog.contextvars.bind_contextvars(trace_id="abc123")
    structlog.get_logger("chat.access").info("request", **_fields())
    info_line(processors, ours)("request", _fields())
    mine, reference = json.loads(ours.getvalue()), json.loads(theirs.getvalue())
    assert ours.getvalue().count("\n") == 1
    assert mine.pop("timestamp").endswith("Z") and reference.pop("timestamp").endswith("Z")
    assert list(mine.items()) == list(reference.items())  # same keys, same order, same values
    assert mine["trace_id"] == "abc123" and mine["level"] == "info" and mine["event"] == "request"
    assert mine["model"].startswith("m" * MAX_FIELD_CHARS + "... (600 chars)")


def test_the_level_decides_as_for_structlog(restore_structlog: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", json=True)("request", _fields())
    assert capsys.readouterr().err == ""
    configure_logging("info", json=True)("request", _fields())
    assert json.loads(capsys.readouterr().err)["route"] == "/v1/embeddings"
