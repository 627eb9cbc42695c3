"""``python -m tests.helpers.fake_provider --port N`` starts the fake provider for local trials (docs/running.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from app.config.settings import settings_from_dict
from tests.conftest import ServerThread
from tests.helpers.fake_provider import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_fake_provider_runs_from_the_command_line_and_a_gateway_uses_it() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.fake_provider", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().strip()  # printed once the socket is bound
        assert first == f"fake provider on http://127.0.0.1:{port}/v1", first
        assert "rate_limited" in proc.stderr.readline()
        deployment = {"litellm_model": "openai/normal", "api_base": f"http://127.0.0.1:{port}/v1"}
        limited = {**deployment, "name": "limited", "litellm_model": "openai/rate_limited"}
        settings = settings_from_dict(
            {"models": {"deployments": [{**deployment, "name": "fake"}, limited]}}, environ={}
        )
        gateway = ServerThread(settings).start()
        try:
            url = f"{gateway.base_url}/v1/chat/completions"
            body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
            answer = httpx.post(url, json=body, timeout=20)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "Hello, world! This is the fake provider."
            refused = httpx.post(url, json={**body, "model": "limited"}, timeout=20)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
        finally:
            gateway.stop()
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_taken_port_is_one_line_and_status_1() -> None:
    port = free_port()
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.fake_provider", "--port", str(port)],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stderr is not None and "fake provider on" in first.stderr.readline()
        second = subprocess.run(
            [sys.executable, "-m", "tests.helpers.fake_provider", "--port", str(port)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1
        assert second.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    finally:
        first.terminate()
        first.wait(20)
