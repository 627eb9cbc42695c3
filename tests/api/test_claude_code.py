"""Claude Code (``@anthropic-ai/claude-code`` from npm) in print mode against a real ``python -m app``
whose model is an OpenAI-wire provider (a client that sends every Anthropic-only control
on every turn must work against any configured model).

Claude Code is installed at test time into a cache directory (``npm install``, the npm registry
being the only network this needs) and reused by later runs. Its package ships a native binary
per platform; the test runs that binary directly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.fake_agent import MARKER, ONE_LINE, FakeAgentProvider

CLAUDE_CODE_VERSION = "2.1.197"
CACHE = Path(os.environ.get("CLAUDE_CODE_CACHE", Path(tempfile.gettempdir()) / "chat-gateway-test-claude-code"))
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
KEY = "sk-gateway-claude-code"
#: Generous: the gateway's start imports LiteLLM, which takes a while on a loaded CI machine.
READY_S = 120.0
RUN_S = 120.0


def _binary(root: Path) -> Path | None:
    for candidate in sorted((root / "node_modules" / "@anthropic-ai").glob("claude-code-*/claude")):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def claude() -> Path:
    root = CACHE / CLAUDE_CODE_VERSION
    found = _binary(root)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is not installed: these tests install Claude Code from the npm registry "
            "(install Node.js and npm, e.g. apt-get install nodejs npm)"
        )
    root.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(root),
            "--no-audit",
            "--no-fund",
            f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = _binary(root)
    if result.returncode != 0 or found is None:
        pytest.fail(f"npm install of Claude Code {CLAUDE_CODE_VERSION} failed: {result.stderr[-2000:]}")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def agent_provider() -> Iterator[FakeAgentProvider]:
    provider = FakeAgentProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def gateway_url(agent_provider: FakeAgentProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    config = tmp_path_factory.mktemp("claude-code") / "gateway.toml"
    deployments = "".join(
        f'[[models.deployments]]\nname = "{name}"\nlitellm_model = "openai/{name}"\n'
        f'api_base = "{agent_provider.base_url}"\n'
        for name in ("agent", "oneliner")
    )
    # Claude Code's requests are ~80 KB (its system prompt and ~20 tool schemas).
    config.write_text(
        f'[server]\nport = {port}\nmax_body_bytes = 4194304\nlog_level = "warning"\napi_keys_env = "CC_GATEWAY_KEYS"\n'
        + deployments
    )
    env = {**os.environ, "CHAT_CONFIG": str(config), "CC_GATEWAY_KEYS": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while True:
            assert proc.poll() is None, (
                f"the gateway exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            )
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_claude(claude: Path, gateway_url: str, home: Path, prompt: str, model: str, *extra: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway_url,
        "ANTHROPIC_API_KEY": KEY,
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    result = subprocess.run(
        [str(claude), "-p", prompt, "--model", model, *extra],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=RUN_S,
    )
    assert result.returncode == 0, f"claude exited {result.returncode}: {result.stdout[-1000:]} {result.stderr[-2000:]}"
    return result.stdout


def test_one_line_answer(claude: Path, gateway_url: str, agent_provider: FakeAgentProvider, tmp_path: Path) -> None:
    before = len(agent_provider.bodies())
    out = run_claude(claude, gateway_url, tmp_path, "Say pong.", "oneliner")
    assert out.strip() == ONE_LINE
    (sent,) = [b for b in agent_provider.bodies()[before:] if b.get("model") == "oneliner"]
    # What Claude Code sends that only Anthropic understands never reached the OpenAI-wire provider.
    for field in ("thinking", "context_management", "output_config", "metadata", "system"):
        assert field not in sent
    assert sent["max_tokens"] == 32000 and sent["stream"] is True
    assert sent["messages"][0]["role"] == "system"
    names = [t["function"]["name"] for t in sent["tools"]]
    assert "Bash" in names and len(names) >= 10
    assert all(t["type"] == "function" and "parameters" in t["function"] for t in sent["tools"])


def test_one_bash_tool_call(claude: Path, gateway_url: str, agent_provider: FakeAgentProvider, tmp_path: Path) -> None:
    before = len(agent_provider.bodies())
    out = run_claude(claude, gateway_url, tmp_path, "Run the marker command.", "agent", "--allowedTools", "Bash")
    assert out.strip() == f"The command printed: {MARKER}"
    turns = [b for b in agent_provider.bodies()[before:] if b.get("model") == "agent"]
    assert len(turns) == 2
    call, result = turns[1]["messages"][-2:]
    assert call["role"] == "assistant"
    assert call["tool_calls"][0]["function"]["name"] == "Bash"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"])["command"] == f"echo {MARKER}"
    assert result == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": MARKER}
