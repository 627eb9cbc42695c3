"""A real ``python -m app`` for the tests that need a process (signals, replicas, start-up, logs).

One owner of the process: it picks a free port (passed as ``CHAT_SERVER__PORT``, so configurations
need not name one), writes its output to a log file, waits for readiness with a bound, and stops it
(SIGTERM, then SIGKILL after a grace) however the test ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GatewayProcess:
    def __init__(self, config: str | Path, log: Path, env: Mapping[str, str] | None = None) -> None:
        """``config``: TOML text (written next to ``log``) or the path of a file; ``env``: added variables."""
        if isinstance(config, str):
            path = log.with_suffix(".toml")
            path.write_text(config)
            config = path
        self.port = free_port()
        self.log = log
        environ = {
            **os.environ,
            "CHAT_CONFIG": str(config),
            "CHAT_SERVER__PORT": str(self.port),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            **(env or {}),
        }
        self._sink = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"], env=environ, stdout=self._sink, stderr=subprocess.STDOUT
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-4000:]
            try:
                if httpx.get(f"{self.base}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.base} did not become ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self, grace: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._sink.close()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
