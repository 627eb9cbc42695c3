"""What the gateway writes to stderr: the access line (``configure_logging``'s return) as a structlog logger
writes it, lines from several threads whole, and the standard library's records as the same JSON lines."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from app.observability.log import MAX_FIELD_CHARS, UtcStamper, configure_logging, info_line, render_json
from app.server.banner import write_line


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


def test_the_timestamp_is_utc_to_the_microsecond() -> None:
    stamper = UtcStamper()
    before = datetime.now(UTC)
    stamps = [stamper(None, "info", {})["timestamp"] for _ in range(3)]
    after = datetime.now(UTC)
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        # Microseconds truncated here, rounded by datetime: a microsecond either way is the same time.
        slack = timedelta(microseconds=1)
        assert before - slack <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after + slack
    assert stamps == sorted(stamps)


def test_values_json_cannot_hold_are_written_as_their_repr() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    line = json.loads(render_json({"what": Opaque(), "text": "héllo", "n": 2}))
    assert line == {"what": "<opaque>", "text": "héllo", "n": 2}


def test_log_lines_and_the_ready_line_written_at_once_stay_whole(
    restore_structlog: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ready line is written from the ready watch's thread while the server may already log (a
    # client's first request races it). Written with ``print`` on both sides, one line in a few
    # hundred was glued to the other's: the log line lost to a reader of JSON lines.
    # Built as Python builds stderr: unbuffered, each write a system call (where threads switch).
    raw = io.FileIO(tmp_path / "stderr", "w")
    with io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True) as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        configure_logging("info", json=True)
        log = structlog.get_logger("chat.connections")
        ready = "  ready in 0.8 s: http://127.0.0.1:8000/ (chat page; API reference at /schema/swagger)"
        until = time.monotonic() + 1.0

        def banner() -> None:
            while time.monotonic() < until:
                write_line(ready, stderr)

        thread = threading.Thread(target=banner)
        thread.start()
        logged = 0
        while time.monotonic() < until:
            log.warning("connection_closed", reason="ws_invalid_utf8", count=1)
            logged += 1
        thread.join(5.0)
    lines = (tmp_path / "stderr").read_text().splitlines()
    torn = [line for line in lines if line != ready and not (line.startswith("{") and line.endswith("}"))]
    assert torn == [], torn[:3]
    assert sum(line.startswith("{") for line in lines) == logged


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_standard_library_records_are_json_lines_too(
    restore_structlog: None, restore_root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio's and uvicorn's errors come through the standard library's logging: written by a
    # framework's default handler they were plain text, a traceback over many lines, in a JSON log.
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info", json=True)
    try:
        raise ValueError("the provider sent nonsense")
    except ValueError:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
    logging.getLogger("some.library").info("chatter")  # below warning: not the request log
    logging.getLogger("some.library").warning("a warning of its own")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    error, warning = (json.loads(line) for line in lines)
    assert error["event"] == "Task exception was never retrieved" and error["level"] == "error"
    assert error["logger"] == "asyncio" and error["timestamp"].endswith("Z")
    assert "ValueError: the provider sent nonsense" in error["exception"]
    assert warning == {**warning, "event": "a warning of its own", "level": "warning", "logger": "some.library"}


def test_the_app_leaves_the_standard_library_to_that_handler(
    restore_structlog: None, restore_root_logging: None
) -> None:
    from app.app import create_app
    from app.config.settings import settings_from_dict
    from tests.conftest import settings_dict

    create_app(settings_from_dict(settings_dict("http://127.0.0.1:9/v1")))
    handlers = logging.getLogger().handlers
    assert [type(h).__name__ for h in handlers] == ["StreamHandler"], handlers  # no framework queue thread
    assert isinstance(handlers[0].formatter, structlog.stdlib.ProcessorFormatter)
