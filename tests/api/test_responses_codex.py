"""The Codex CLI against the gateway's Responses API (docs/responses.md): ``codex exec`` with a model provider
whose ``base_url`` is a real ``python -m app`` and ``wire_api = "responses"``, in front of the fake
provider scripted to ask for one ``exec_command`` call and then answer from its output.

Codex sends what real clients send (``store: false``, ``include``, ``client_metadata``, developer
messages, a ``namespace`` tool, ``web_search``), and every turn carries the whole conversation.
The CLI comes from npm (``@openai/codex`` ships its binary) and is installed at test time into a
cache directory (``CODEX_CLI_CACHE``, default inside the venv), so only the npm registry is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtests.processes import GatewayProcess
from tests.helpers.fake_provider import EXEC_MARKER, FakeProvider
from tests.helpers.responses_support import KEY_A, start_gateway

CODEX_VERSION = "0.171.0"
CODEX_TIMEOUT_S = 120


def codex_binary() -> Path:
    """The pinned CLI, installed from npm on first use into a cache directory."""
    cache = Path(os.environ.get("CODEX_CLI_CACHE") or Path(sys.prefix) / "codex-cli") / CODEX_VERSION
    binary = cache / "node_modules" / ".bin" / "codex"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is not installed: the Codex CLI test installs @openai/codex from npm "
            "(install Node.js 20+ with npm in CI, e.g. apt-get install nodejs npm)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), f"@openai/codex@{CODEX_VERSION}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not binary.exists():
        pytest.fail(f"npm install @openai/codex@{CODEX_VERSION} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return binary


@pytest.fixture(scope="module")
def codex_gateway(fake_provider: FakeProvider, tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path_factory.mktemp("codex-gateway"), fake_provider)
    yield gateway
    gateway.stop()


def run_codex(binary: Path, home: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update({"CODEX_HOME": str(home), "GW_KEY": KEY_A, "NO_COLOR": "1"})
    return subprocess.run(
        [str(binary), "exec", "--skip-git-repo-check", "-s", "danger-full-access", *args],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CODEX_TIMEOUT_S,
    )


def test_codex_exec_runs_a_tool_and_answers(codex_gateway: GatewayProcess, fake: FakeProvider, tmp_path: Path) -> None:
    binary = codex_binary()
    home, workdir = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    (home / "config.toml").write_text(
        'model = "script_exec"\nmodel_provider = "gateway"\n\n[model_providers.gateway]\nname = "gateway"\n'
        f'base_url = "{codex_gateway.base_url}/v1"\nenv_key = "GW_KEY"\nwire_api = "responses"\n'
        "request_max_retries = 0\nstream_max_retries = 0\n"
    )
    first = run_codex(binary, home, workdir, "Run the gateway check and tell me what it printed.")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # The last message Codex prints (stdout) is the model's answer, made from the command's real output.
    assert "The command printed:" in first.stdout and EXEC_MARKER in first.stdout, first.stdout[-3000:]
    calls = [r for r in fake.requests if r.model == "script_exec"]
    assert len(calls) == 2
    tool_results = [m for m in calls[1].body["messages"] if m.get("role") == "tool"]
    assert EXEC_MARKER in tool_results[0]["content"]
    # Codex offers web_search (left out) and a namespace tool (offered as its functions).
    names = {t["function"]["name"] for t in calls[0].body["tools"]}
    assert "exec_command" in names and "spawn_agent" in names
    # A further turn of the same session (store false: Codex sends the whole conversation again).
    second = run_codex(binary, home, workdir, "resume", "--last", "And again?")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert EXEC_MARKER in second.stdout
    calls = [r for r in fake.requests if r.model == "script_exec"]
    assert len(calls) == 3
    contents = [str(m.get("content")) for m in calls[2].body["messages"]]
    assert any("Run the gateway check" in c for c in contents) and any("And again?" in c for c in contents)
