"""Every command the README gives works as written.

The two set-up commands are checked against what CI runs (the test command is the last line of
.ci/run, character for character) and against what this suite exercises (``python -m app`` on the
shipped configuration); every shell block of "Try it", the SDK example and the page's open command
run verbatim against a real ``python -m app``, with only the port changed (8000 may be taken here).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.config.test_cli import QUICK_S, SLOW_S, Gateway, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str, text: str = README) -> list[str]:
    """The bodies of the fenced blocks of one language ("" for plain ones), in order."""
    found: list[str] = []
    fence: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.strip() == "```":
            if fence == language:
                found.append("\n".join(body) + "\n")
            fence = None
        elif fence is not None:
            body.append(line)
    return found


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_the_two_commands_are_the_ones_ci_and_the_suite_run() -> None:
    start, tests = [b.strip() for b in blocks("sh", section("The two commands"))]
    ci_last_line = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert tests == ci_last_line
    assert start == tests.replace("requirements-dev.lock", "requirements.lock").replace("-m pytest", "-m app")
    assert (REPO_ROOT / "requirements.lock").is_file() and (REPO_ROOT / "requirements-dev.lock").is_file()


def test_the_banner_shown_is_the_banner_printed() -> None:
    from app.config.settings import DEFAULT_CONFIG_PATH, load_settings
    from app.server.banner import opening_lines

    shown = next(b for b in blocks("") if b.startswith("chat-gateway "))
    printed = opening_lines(load_settings(environ={}), DEFAULT_CONFIG_PATH, "0.1.0", source="default", environ={})
    for line in printed[2:]:  # the path differs by checkout
        assert line in shown.splitlines(), line


@pytest.fixture(scope="module")
def served() -> Iterator[int]:
    port = free_port()
    gateway = Gateway({"CHAT_SERVER__PORT": str(port)})
    try:
        gateway.wait_for("ready in", SLOW_S)
        yield port
    finally:
        gateway.stop()


def on_port(text: str, port: int) -> str:
    return text.replace("localhost:8000", f"127.0.0.1:{port}")


def test_try_it_shell_commands_run_verbatim(served: int) -> None:
    curl, _open = blocks("sh", section("Try it"))
    result = subprocess.run(
        ["bash", "-c", on_port(curl, served)], capture_output=True, text=True, timeout=SLOW_S, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"content":"## A demo answer' in out  # the JSON answer, markdown built from the prompt
    assert out.count("data: [DONE]") == 1  # the SSE stream ran to its end
    assert '"code":"rate_limit_exceeded"' in out  # demo-error before its first token
    assert "event: error" in out and '"code":"upstream_unavailable"' in out  # and after it


def test_try_it_sdk_example_runs_verbatim(served: int) -> None:
    (example,) = blocks("python", section("Try it"))
    result = subprocess.run(
        [sys.executable, "-c", on_port(example, served)],
        capture_output=True,
        text=True,
        timeout=QUICK_S,
        check=False,
        env={**os.environ, "OPENAI_API_KEY": ""},
    )
    assert result.returncode == 0, result.stderr
    whole, streamed = result.stdout.split("\n", 1)[0], result.stdout.split("\n", 1)[1]
    assert whole.startswith("## A demo answer")
    assert "You said `hi`" in streamed


def test_try_it_open_command_opens_the_page(served: int, tmp_path: Path) -> None:
    # No browser here: an `xdg-open` first on PATH fetches what it is given, as a browser would.
    opener = tmp_path / "xdg-open"
    opener.write_text('#!/bin/sh\nexec curl -sf "$1"\n')
    opener.chmod(opener.stat().st_mode | stat.S_IEXEC)
    _curl, open_page = blocks("sh", section("Try it"))
    result = subprocess.run(
        ["bash", "-c", on_port(open_page, served)],
        capture_output=True,
        text=True,
        timeout=QUICK_S,
        check=False,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert "<title>" in result.stdout and "chat" in result.stdout.lower()
