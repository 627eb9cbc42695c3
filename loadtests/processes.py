"""Real processes on loopback for scenarios and tests: a private redis-server, the fast fake
upstream, and gateways run as ``python -m app`` with ``CHAT_*`` overrides.

Each child runs in its own session (process group) so that stopping it also stops anything it
started (uvicorn's worker processes); every wait is bounded and every failure names the child's
log. Nothing listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Child:
    """One child process in its own process group, its output in ``log``."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace``; returns the exit status (None if it never died)."""
        if self.alive():
            self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)  # the group's leftovers, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        return self.proc.returncode


class RedisProcess:
    """A private redis-server on a free loopback port, nothing persisted."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
        self._binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> RedisProcess:
        argv = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir)]
        self.child = Child(argv, self.workdir / f"redis-{self.port}.log")
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline or not self.child.alive():
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{tail(self.child.log)}")
            time.sleep(0.02)
        return self

    def pause(self) -> None:
        """SIGSTOP: the socket still accepts connections, but nothing answers (a stalled Redis)."""
        assert self.child is not None
        self.child.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.child is not None
        self.child.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: connections are refused until ``start`` runs again on the same port."""
        if self.child is not None:
            self.child.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.child.proc.wait(5.0)

    def stop(self) -> None:
        if self.child is not None:
            self.child.signal(signal.SIGCONT)
            self.kill()


class ReadyProcess:
    """A child that prints ``READY <port>`` on stdout once it listens (``--port 0``: the port it got);
    its stderr goes to ``log``."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        # stdout is read for the READY line, so this one is not a plain Child.
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 15.0) -> Self:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(b"READY "):
            raise RuntimeError(f"{self.log.stem} not ready within {timeout} s ({line!r}):\n{tail(self.log)}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class UpstreamProcess(ReadyProcess):
    """``loadtests.upstream``: the fast fake OpenAI-compatible provider."""

    def __init__(self, workdir: Path, *, max_seconds: float = 600, extra: list[str] | None = None) -> None:
        argv = [PY, "-m", "loadtests.upstream", "--port", "0", "--max-seconds", str(max_seconds), *(extra or [])]
        super().__init__(argv, workdir / "upstream.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def deployments_toml(models: dict[str, str], api_base: str) -> str:
    """A config file that only lists deployments (public name -> upstream model); the rest is CHAT_* env."""
    parts = ["# generated for a loopback scenario; other settings come from CHAT_* variables", "[models]"]
    for name, upstream_model in models.items():
        parts += [
            "[[models.deployments]]",
            f"name = {json.dumps(name)}",
            f"litellm_model = {json.dumps('openai/' + upstream_model)}",
            f"api_base = {json.dumps(api_base)}",
            "timeout_s = 60",
            "",
        ]
    return "\n".join(parts)


#: A gateway's access line per request, as a deployment runs it: GatewayProcess starts at ``warning``
#: (a long run's log stays small), so a cell whose figure stands for a deployment passes this.
ACCESS_LOG = {"CHAT_SERVER__LOG_LEVEL": "info"}


class GatewayProcess:
    """``python -m app`` on a free port: configuration from ``config_toml`` plus ``CHAT_*`` overrides.

    ``env`` values win over the defaults set here (loopback host, a free port, log level warning).
    """

    def __init__(
        self,
        workdir: Path,
        config_toml: str,
        env: dict[str, Any] | None = None,
        name: str = "gateway",
        root: Path = ROOT,
        launcher: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.name = name
        config = workdir / f"{name}.toml"
        config.write_text(config_toml)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        environ.update(
            {
                "CHAT_CONFIG": str(config),
                "CHAT_SERVER__HOST": "127.0.0.1",
                "CHAT_SERVER__PORT": str(self.port),
                "CHAT_SERVER__LOG_LEVEL": "warning",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            }
        )
        environ.update({k: str(v) for k, v in (env or {}).items()})
        # ``root``: the checkout whose ``app`` package runs (another commit's, to compare).
        # ``launcher``: Python arguments that start the app instead of ``-m app`` (a ``-c`` script that
        # sets something up first, then calls ``app.__main__.main``).
        self.child = Child([PY, *(launcher or ["-m", "app"])], workdir / f"{name}.log", environ, cwd=root)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.child.pid

    def wait_ready(self, timeout: float = 60.0, path: str = "/health/ready") -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while True:
            if not self.child.alive():
                raise RuntimeError(f"{self.name} exited ({self.child.proc.returncode}):\n{tail(self.child.log)}")
            with contextlib.suppress(OSError):
                if http_get(self.base_url + path, 1.0)[0] == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{tail(self.child.log)}")
            time.sleep(0.05)

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (stderr is not a terminal, so structlog writes JSON)."""
        events = []
        for line in self.child.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def stop(self, grace: float = 10.0) -> int | None:
        return self.child.stop(grace)
