"""``python -m app`` as a newcomer meets it: --help, --version, --config, --check, the banner, and
configuration problems as one ``config error: <key>: <why>`` line each with exit status 2.

Every test runs the real command in a subprocess; the ones that get past configuration import
LiteLLM (seconds each), so they are few and each checks several things.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A LiteLLM import on a busy two-core machine can take 20 s; these bound the waits, they are not targets.
QUICK_S = 30
SLOW_S = 90

DEMO = '[[models.deployments]]\nname = "demo"\nlitellm_model = "demo/demo"\n'
UNREACHABLE = (
    '\n[[models.deployments]]\nname = "down"\nlitellm_model = "openai/x"\napi_base = "http://127.0.0.1:{port}/v1"\n'
)
TYPO = '[[models.deployments]]\nname = "gpt"\nlitellm_model = "opnai/gpt-4o-mini"\n'


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


def run(*args: str, timeout: float = QUICK_S, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def config_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("config error: ")]


def closed_port() -> int:
    """A port nothing listens on (bound and released: connections to it are refused)."""
    return free_port()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return data


# ---- without LiteLLM: fast ---------------------------------------------------------------------


def test_help_describes_the_options_and_starts_nothing() -> None:
    started = time.monotonic()
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--check", "--version", "CHAT_CONFIG", "CHAT_<SECTION>__<KEY>"):
        assert option in result.stdout, option
    assert "replaces the default" in " ".join(result.stdout.split())
    assert result.stderr == ""
    # No LiteLLM import, no server: well under the seconds a start-up takes.
    assert time.monotonic() - started < QUICK_S


def test_version_is_the_pyproject_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"chat-gateway {project()['version']}"


def test_unknown_option_is_a_usage_error() -> None:
    result = run("--bogus")
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_var_problem_names_the_variable_and_the_key_it_meant() -> None:
    result = run("--check", CHAT_SERVER__PROT="9000")
    assert result.returncode == 2, result.stderr
    # The shipped config serves only the built-in demo models: no LiteLLM import, one line, at once.
    assert result.stderr.splitlines() == [
        "config error: CHAT_SERVER__PROT: unknown key server.prot; did you mean `port` (CHAT_SERVER__PORT)?"
    ]


def test_missing_config_file_blames_the_option_or_the_variable_that_named_it(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: --config: cannot read "), lines
    assert "absent.toml" in lines[0] and "No such file" in lines[0]
    result = run("--check", CHAT_CONFIG=str(tmp_path / "gone.toml"))
    assert result.returncode == 2
    assert result.stderr.startswith("config error: CHAT_CONFIG: cannot read "), result.stderr
    assert "gone.toml" in result.stderr


def test_unknown_keys_in_the_file_get_close_matches(tmp_path: Path) -> None:
    path = tmp_path / "typos.toml"
    path.write_text("[server]\nprot = 9000\n[cahce]\nenabled = true\n" + DEMO + 'api_key_enb = "X"\n')
    result = run("--check", CHAT_CONFIG=str(path))
    assert result.returncode == 2, result.stderr
    assert config_errors(result.stderr) == [
        "config error: server.prot: unknown key; did you mean `port`?",
        "config error: cahce: unknown section; did you mean `cache`?",
        "config error: models.deployments[0].api_key_enb: unknown key; did you mean `api_key_env`?",
    ]


def test_console_script_points_at_main() -> None:
    scripts = project()["scripts"]
    assert isinstance(scripts, dict)
    module, _, attr = scripts["chat-gateway"].partition(":")
    assert callable(getattr(import_module(module), attr))


def test_port_in_use_is_reported_before_the_slow_import(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(CHAT_SERVER__PORT=str(port))
    assert result.returncode == 1, result.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "loading providers" not in result.stderr  # reported before LiteLLM's import
    assert "Traceback" not in result.stderr


# ---- with LiteLLM ------------------------------------------------------------------------------


def test_check_accepts_the_default_config_without_serving() -> None:
    port = free_port()
    result = run("--check", timeout=SLOW_S, CHAT_SERVER__PORT=str(port))
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"config ok: {REPO_ROOT / 'config' / 'default.toml'} (3 models: demo, demo-error, demo-slow)"
    )
    assert config_errors(result.stderr) == []
    with socket.socket() as probe:  # nothing was started on the port
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_check_reports_a_provider_typo_from_the_config_option(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(DEMO)
    bad.write_text(TYPO + '\n[[models.deployments]]\nname = "x"\nlitellm_model = "nosuchprovider/x"\n')
    # --config wins over CHAT_CONFIG, as a command-line option should.
    result = run("--config", str(bad), "--check", timeout=SLOW_S, CHAT_CONFIG=str(good))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    typo, unknown = config_errors(result.stderr)
    assert typo == (
        "config error: models.deployments[0].litellm_model: unknown provider 'opnai' in 'opnai/gpt-4o-mini'; "
        "did you mean 'openai'?"
    )
    assert unknown.startswith(
        "config error: models.deployments[1].litellm_model: unknown provider 'nosuchprovider' in 'nosuchprovider/x'"
    )
    assert "e.g. openai, anthropic" in unknown
    assert result.stdout == ""


def test_check_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    # A bad value, an unknown variable, an unset provider key and a provider typo: all four at once,
    # not the first stage's and then, once that is fixed, the next one's.
    path = tmp_path / "all.toml"
    path.write_text('[server]\nport = "abc"\n\n' + TYPO + 'api_key_env = "OPENAI_API_KEY"\n')
    env = environment(CHAT_SERVER__PROT="9000")
    env.pop("OPENAI_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "app", "--config", str(path), "--check"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SLOW_S,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = config_errors(result.stderr)
    assert errors == [
        "config error: server.port: Expected `int`, got `str`",
        "config error: CHAT_SERVER__PROT: unknown key server.prot; did you mean `port` (CHAT_SERVER__PORT)?",
        "config error: models.deployments[0].api_key_env: environment variable OPENAI_API_KEY is not set",
        "config error: models.deployments[0].litellm_model: unknown provider 'opnai' in 'opnai/gpt-4o-mini'; "
        "did you mean 'openai'?",
    ], errors
    assert result.stdout == ""


def test_start_with_a_provider_typo_is_one_config_error_line(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(
        TYPO + '\n[[models.deployments]]\nname = "local"\nlitellm_model = "openai/llama"\n'
        'api_base = "localhost:11434"\n'
    )
    result = run(timeout=SLOW_S, CHAT_CONFIG=str(path), CHAT_SERVER__PORT=str(free_port()))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    assert config_errors(result.stderr) == [
        "config error: models.deployments[0].litellm_model: unknown provider 'opnai' in 'opnai/gpt-4o-mini'; "
        "did you mean 'openai'?",
        "config error: models.deployments[1].api_base: expected an http:// or https:// URL, got 'localhost:11434'",
    ]
    assert "ready in" not in result.stderr


class Gateway:
    """``python -m app`` running; its stderr read line by line on a thread so every wait has a deadline."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=REPO_ROOT,
            env=environment(**env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed within {timeout} s; stderr so far: {self.seen}")

    def stop(self, timeout: float = QUICK_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(QUICK_S)
            raise


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[Gateway, int, Path]]:
    port = free_port()
    path = tmp_path / "gateway.toml"
    # A second deployment whose provider refuses connections: its failure must be logged with its name.
    path.write_text(DEMO + UNREACHABLE.format(port=closed_port()))
    gateway = Gateway({"CHAT_CONFIG": str(path), "CHAT_SERVER__PORT": str(port), "CHAT_CACHE__ENABLED": "true"})
    try:
        yield gateway, port, path
    finally:
        if gateway.proc.poll() is None:
            gateway.proc.kill()
            gateway.proc.wait(QUICK_S)


def test_banner_then_ready_then_serving(gateway_process: tuple[Gateway, int, Path]) -> None:
    gateway, port, path = gateway_process
    # The first lines come at once, before LiteLLM's import: nobody stares at a silent terminal.
    first = gateway.wait_for("chat-gateway ", QUICK_S)
    assert first == f"chat-gateway {project()['version']}"
    assert gateway.wait_for("config ", QUICK_S).split() == ["config", str(path), "(from", "CHAT_CONFIG)"]
    assert gateway.wait_for("listen ", QUICK_S).split() == ["listen", f"127.0.0.1:{port}"]
    assert gateway.wait_for("models ", QUICK_S).split() == ["models", "demo", "(demo/demo),", "down", "(openai/x)"]
    assert gateway.wait_for("auth ", QUICK_S).split()[:2] == ["auth", "none:"]
    assert "memory" in gateway.wait_for("cache ", QUICK_S)
    assert gateway.wait_for("limits ", QUICK_S).split() == ["limits", "none"]
    assert "loading providers" in gateway.wait_for("loading providers", QUICK_S)
    ready = gateway.wait_for("ready in", SLOW_S)
    assert f"http://127.0.0.1:{port}/" in ready
    seconds = float(ready.split("ready in ", 1)[1].split(" s", 1)[0])
    assert 0 < seconds < SLOW_S
    # "ready" means it answers now, with no retry loop.
    response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)
    assert response.status_code == 200

    # An upstream failure: the client gets the contract's 502, the log line names deployment, host, exception.
    down = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": "down", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert down.status_code == 502 and down.json()["error"]["code"] == "upstream_unavailable"
    line = json.loads(gateway.wait_for('"status":502', QUICK_S))
    api_host = urlsplit(next(p for p in path.read_text().split('"') if p.startswith("http://"))).netloc
    assert line["deployment"] == "down"
    assert line["provider_model"] == "openai/x"
    assert line["upstream_host"] == api_host
    assert line["error_class"] == "ConnectionRefusedError"
    assert line["error_chain"].startswith("UpstreamUnavailable <- ")

    assert gateway.stop() == 0
    assert not any("Traceback" in line for line in gateway.seen)


def test_banner_names_auth_limits_and_the_config_option(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(
        '[server]\napi_keys_env = "GW_KEYS"\n[rate_limit]\nrequests_per_minute = 100\n'
        '[[keys]]\nname = "team-a"\nkey_env = "TEAM_A_KEY"\nconcurrent_streams = 4\nbudget_usd = 50\n'
        '[[keys]]\nname = "ci"\nkey_sha256 = "' + "ab" * 32 + '"\nrequests_per_minute = 0\n' + DEMO
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--config", str(path)],
        cwd=REPO_ROOT,
        env=environment(GW_KEYS="k1,k2, k3", TEAM_A_KEY="secret-a", CHAT_SERVER__PORT=str(free_port())),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline().strip() for _ in range(7)]  # the opening lines come before any import
    finally:
        proc.kill()
        proc.wait(QUICK_S)
    banner = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert banner["config"] == f"{path} (from --config)"
    assert banner["auth"] == "3 gateway keys from GW_KEYS, 2 named keys (team-a, ci)"
    assert banner["limits"] == (
        "default: 100 requests/min; team-a: 100 requests/min, 4 streams, $50 per month; ci: none"
    )
    assert not any("secret-a" in line or "k1" in line for line in lines)


def test_start_up_failure_in_the_app_is_one_line(tmp_path: Path) -> None:
    # What the configuration check cannot foresee (here: a lifespan that raises) still ends in one line.
    script = tmp_path / "serve_failing.py"
    script.write_text(
        "import sys, uvicorn\n"
        "from contextlib import asynccontextmanager\n"
        "from litestar import Litestar\n"
        "from app.server.startup_guard import StartupGuard\n"
        "@asynccontextmanager\n"
        "async def broken(app):\n"
        "    raise RuntimeError('the cache backend cannot be built\\nsecond line')\n"
        "    yield\n"
        "uvicorn.run(StartupGuard(Litestar(lifespan=[broken])), port=0, log_level='warning', lifespan='on')\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=QUICK_S,
        check=False,
    )
    assert result.returncode == 3
    assert result.stderr.splitlines() == ["start-up error: RuntimeError: the cache backend cannot be built"]
