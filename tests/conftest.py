"""Shared fixtures: one fake provider and one gateway under real uvicorn per session."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import uvloop

from app.app import create_app
from app.config.settings import Settings, settings_from_dict
from app.server.serve import gateway_config
from tests.helpers.fake_provider import Behaviour, FakeProvider, builtin_behaviours

T = TypeVar("T")

#: Short deadlines keep the suite fast; the fake provider's behaviours are tuned against them.
TEST_STREAMING = {
    "heartbeat_s": 0.2,
    "status_window_s": 0.3,
    "first_token_timeout_s": 1.5,
    "idle_timeout_s": 1.5,
    "resume_ttl_s": 5,
}
#: Behaviours that the fast path and the full LiteLLM path must serve identically.
EXTRA_BEHAVIOURS = {
    "silent_long": Behaviour(silence_after=2, silence_s=3.0),  # longer than the idle timeout
    "paced": Behaviour(gap_s=0.05),  # spaced widely enough to tell a flushed stream from a burst
    "slow_gap": Behaviour(gap_s=0.3),
    "long": Behaviour(content=[f" token{i}" for i in range(400)], gap_s=0.0),
    "fast": Behaviour(gap_s=0.0),
    # First chunk well past the status window (0.3 s) plus a heartbeat (0.2 s), so a heartbeat must come first.
    "slower_first": Behaviour(first_delay_s=0.8),
    "firehose": Behaviour(content=["x" * 4000] * 3000, gap_s=0.0),  # 12 MB: more than socket buffers mostly hold
    # 200 MB, for a test that needs the provider still sending when the gateway lets go: Linux grows
    # a receive buffer up to tcp_rmem's max (32 MB here), so 12 MB can sit in kernel buffers whole
    # and the provider be done before the client is dropped (it happened once in CI).
    "firehose_endless": Behaviour(content=["x" * 4000] * 50_000, gap_s=0.0),
    # The same size with no two chunks alike (LiteLLM's full path ends streams that repeat a chunk).
    "firehose_varied": Behaviour(content=[f"{i:05d}" + "y" * 4000 for i in range(3000)], gap_s=0.0),
}
FAKE_MODELS = sorted(builtin_behaviours()) + sorted(EXTRA_BEHAVIOURS)


def settings_dict(fake_base_url: str, *, fast_path: bool = True, **sections: dict[str, Any]) -> dict[str, Any]:
    deployments: list[dict[str, Any]] = [
        {"name": "demo", "litellm_model": "demo/demo"},
    ]
    for name in FAKE_MODELS:
        deployments.append(
            {
                "name": name,
                "litellm_model": f"openai/{name}",
                "api_base": fake_base_url,
                "timeout_s": 1.5 if name.startswith("hang") else 30,
                "fast_path": fast_path,
            }
        )
    deployments.append(
        {
            "name": "with_fallback",
            "litellm_model": "openai/server_error",
            "api_base": fake_base_url,
            "fallbacks": ["normal"],
        }
    )
    data: dict[str, Any] = {
        "server": {"env": "development", "max_body_bytes": 65536, "log_level": "warning"},
        "streaming": dict(TEST_STREAMING),
        "websocket": {"ping_s": 5, "max_inflight": 4, "max_frame_bytes": 65536},
        "models": {"deployments": deployments},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``predicate()`` holds, polled every 10 ms; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def make_settings(fake_base_url: str, *, fast_path: bool = True, **sections: dict[str, Any]) -> Settings:
    return settings_from_dict(settings_dict(fake_base_url, fast_path=fast_path, **sections), environ={})


class ServerThread:
    """The gateway under real uvicorn in a thread with its own loop (TestClient buffers whole bodies)."""

    def __init__(self, settings: Settings, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings, environ=environ or {})
        # IPPROTO_TCP given explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
        # listener says TCP, and without it Nagle + delayed ACK add 40 ms to every response.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = gateway_config(settings, self.app, loop="asyncio", lifespan="on", log_level="warning", log_config=None)
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"gateway:{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/chat/completions"

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()  # what uvicorn picks in production (loop="auto")
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        started = threading.Event()

        def wait() -> None:
            while not self.server.started and self._thread.is_alive():
                started.wait(0.01)
            started.set()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        if not started.wait(timeout) or not self.server.started:
            raise RuntimeError("the gateway did not start")
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the server's loop (to inspect its tasks or state)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    provider.start()
    for name, behaviour in EXTRA_BEHAVIOURS.items():
        provider.set_behaviour(name, behaviour)
    yield provider
    provider.stop()


@pytest.fixture
def fake(fake_provider: FakeProvider) -> FakeProvider:
    fake_provider.reset()
    return fake_provider


@pytest.fixture(scope="session", params=["fast", "full"])
def gateway(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    """The chat suite runs twice: through the relay fast path and through the full LiteLLM path."""
    server = ServerThread(make_settings(fake_provider.base_url, fast_path=request.param == "fast")).start()
    yield server
    server.stop()


@pytest.fixture
async def client(gateway: ServerThread) -> Any:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as c:
        yield c


# -- Redis ---------------------------------------------------------------------------------------

REDIS_TEST_DB = 13  # a dedicated DB: tests flush only this one


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a spare port, for tests that must stop and restart it."""

    def __init__(self, port: int | None = None) -> None:
        import shutil
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: install it (apt-get install redis-server) or run .ci/run, "
                "which installs it; these tests need a real Redis"
            )
        self._binary = binary
        self._subprocess = subprocess
        self.port = port or _free_port()
        self.proc: Any = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = self._subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self._subprocess.DEVNULL,
            stderr=self._subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not redis_answers(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{REDIS_TEST_DB}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis at 127.0.0.1:6379 if it answers, else a private redis-server."""
    if redis_answers(6379):
        yield f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()
