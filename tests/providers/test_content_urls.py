"""Client URLs in content parts are passed to providers that take them, refused for the rest, and
never fetched by the gateway; nothing a client sends stops the event loop (API.md 6).

The finding: a ``file`` part whose ``file_id`` is a URL made LiteLLM's request transformation (run
by the relay on the event loop) download it synchronously; against a host sending 1 byte a second
the worker answered nothing, ``/health/live`` included, for 20 s. Here a slow local host that
LiteLLM is allowed to fetch from (``litellm.user_url_allowed_hosts``) counts every connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config.settings import settings_from_dict
from app.providers.content_urls import ANTHROPIC, NO_URLS, OPENAI_WIRE, policy_for, remote_urls
from app.providers.litellm_setup import import_litellm
from loadtests.processes import GatewayProcess, deployments_toml
from tests.conftest import ServerThread, make_settings, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider


class SlowHost:
    """Accepts connections and dribbles one byte a second: a URL no worker may wait for."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Length: 100\r\n\r\n")
                while not self._stop.wait(1.0):
                    conn.sendall(b"x")
            except OSError:
                pass

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture(scope="module")
def slow_host() -> Iterator[SlowHost]:
    litellm = import_litellm()
    saved = list(litellm.user_url_allowed_hosts)
    host = SlowHost()
    # What made the finding reachable in a test: LiteLLM refuses private hosts unless allowed.
    litellm.user_url_allowed_hosts = [*saved, "127.0.0.1", f"127.0.0.1:{host.port}"]
    yield host
    litellm.user_url_allowed_hosts = saved
    host.close()


@pytest.fixture(scope="module", params=["fast", "full"])
def server(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    gateway = ServerThread(make_settings(fake_provider.base_url, fast_path=request.param == "fast")).start()
    yield gateway
    gateway.stop()


def ask(parts: list[dict[str, Any]], model: str = "normal", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, *parts]}],
        **extra,
    }


def file_part(url: str) -> dict[str, Any]:
    return {"type": "file", "file": {"file_id": url}}


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


async def test_an_image_url_goes_to_an_openai_wire_provider_untouched(
    server: ServerThread, fake: FakeProvider, slow_host: SlowHost
) -> None:
    url = slow_host.url("picture.png")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=ask([image_part(url)]))
    assert r.status_code == 200, r.text
    [record] = fake.requests
    sent = record.body["messages"][0]["content"][1]
    assert sent == {"type": "image_url", "image_url": {"url": url}}  # the provider's to fetch
    assert slow_host.connections == 0


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (file_part("{url}"), "messages[0].content[1].file.file_id"),
        (file_part("www.example.invalid/doc.pdf"), "messages[0].content[1].file.file_id"),
        (
            {"type": "input_audio", "input_audio": {"data": "{url}", "format": "wav"}},
            "messages[0].content[1].input_audio.data",
        ),
        ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "messages[0].content[1].image_url.url"),
        ({"type": "video_url", "video_url": {"url": "{url}"}}, "messages[0].content[1].video_url.url"),
    ],
)
async def test_a_url_the_provider_is_not_given_is_a_400_and_never_fetched(
    server: ServerThread, fake: FakeProvider, slow_host: SlowHost, part: dict[str, Any], param: str
) -> None:
    part = _fill(part, slow_host.url("doc.pdf"))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        for stream in (False, True):
            started = time.monotonic()
            r = await c.post("/v1/chat/completions", json=ask([part], stream=stream))
            assert time.monotonic() - started < 2.0
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert (error["type"], error["code"], error["param"]) == (
                "invalid_request_error",
                "unsupported_content",
                param,
            )
            assert "127.0.0.1" not in error["message"]  # the message does not quote the client's URL
    assert fake.requests == []
    assert slow_host.connections == 0


async def test_a_refused_url_is_named_where_the_client_put_it(server: ServerThread, fake: FakeProvider) -> None:
    """Messages and Responses requests are translated (a system prompt in front, tool results split,
    input items regrouped): the refusal names the client's own field, not the translation's."""
    url = "file:///etc/passwd"
    messages = {
        "model": "normal",
        "max_tokens": 10,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "see"}, {"type": "image", "source": {"type": "url", "url": url}}],
            },
        ],
    }
    responses = {
        "model": "normal",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "first"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_file", "file_id": "https://x.invalid/a.pdf"}],
            },
        ],
    }
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        refused = await c.post("/v1/messages", json=messages)
        assert refused.status_code == 400, refused.text
        assert "`messages[2].content[1].source.url`" in refused.json()["error"]["message"]
        refused = await c.post("/v1/responses", json=responses)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("unsupported_content", "input[1].content[0].file_id")
    assert fake.requests == []


async def test_a_url_part_over_websocket_is_an_error_frame(server: ServerThread, slow_host: SlowHost) -> None:
    from websockets.asyncio.client import connect

    async with connect(server.ws_url) as ws:
        body = ask([file_part(slow_host.url("doc.pdf"))])
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "u", "request": body}))
        frame = json.loads(await ws.recv())
    assert frame["type"] == "error" and frame["status"] == 400
    assert frame["error"]["code"] == "unsupported_content"
    assert slow_host.connections == 0


#: Run in its own process, so that its timings are the gateway's and not this process's (the
#: clients below): GET /health/live on one kept-alive connection every 10 ms, latencies printed.
PROBE = """
import json, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
request = b"GET /health/live HTTP/1.1\\r\\nHost: probe\\r\\n\\r\\n"
latencies, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    started = time.perf_counter()
    sock.sendall(request)
    reply = b""
    while not (reply.endswith(b"}") and b"\\r\\n\\r\\n" in reply):
        data = sock.recv(65536)
        if not data:
            raise SystemExit("closed")
        reply += data
    latencies.append(time.perf_counter() - started)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    time.sleep(0.01)
print(json.dumps(latencies))
"""

#: ``python -m app`` with LiteLLM allowed to fetch from the slow host (as the finding's probe did).
LAUNCHER = """
import sys
from app.providers.litellm_setup import import_litellm
from loadtests.processes import GatewayProcess, deployments_toml
import_litellm().user_url_allowed_hosts = sys.argv[1].split(",")
from app.__main__ import main
sys.exit(main([]))
"""


def test_the_loop_keeps_answering_while_url_parts_arrive(
    tmp_path: Path, fake_provider: FakeProvider, slow_host: SlowHost
) -> None:
    """/health/live stays under 10 ms p99 while requests with URL parts (refused, and passed on) run.

    A window whose p99 is over the bound is measured again, up to WINDOWS times: on a shared 2-core
    machine other processes alone can push one window's p99 past 10 ms. A loop that waits on a URL
    fails every window, by seconds (the slow host sends a byte a second), so each window's maximum
    is held under one second whatever the machine does. When the idle gateway's own p99 (measured
    first) is already over half the bound, the machine cannot tell 10 ms apart: the test is
    skipped with both figures, after those hard checks.
    """
    config = deployments_toml({"normal": "normal"}, fake_provider.base_url)
    allowed = f"127.0.0.1,127.0.0.1:{slow_host.port}"
    gateway = GatewayProcess(tmp_path, config, launcher=["-c", LAUNCHER, allowed])
    windows: list[tuple[float, float, int]] = []  # p99, max, requests
    try:
        gateway.wait_ready(timeout=90)
        asyncio.run(_hostile_load(gateway.base_url, slow_host, until=time.monotonic()))  # one round: warm
        idle = _probe(gateway.port, WINDOW_S / 2)
        idle_p99 = statistics.quantiles(idle, n=100, method="inclusive")[98]
        for _ in range(WINDOWS):
            probe = subprocess.Popen(
                [sys.executable, "-c", PROBE, str(gateway.port), str(WINDOW_S)], stdout=subprocess.PIPE, text=True
            )
            statuses = asyncio.run(_hostile_load(gateway.base_url, slow_host, until=time.monotonic() + WINDOW_S))
            out, _ = probe.communicate(timeout=WINDOW_S + 20)
            assert probe.returncode == 0
            latencies = json.loads(out)
            assert {400, 200} <= set(statuses) <= {200, 400}, statuses
            assert len(latencies) >= 50
            p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
            windows.append((p99, max(latencies), len(statuses)))
            assert max(latencies) < 1.0, f"the loop stood still: {windows}"
            if p99 < 0.010:
                break
    finally:
        gateway.stop()
    assert slow_host.connections == 0  # nothing fetched, by anyone
    shown = [f"p99 {p * 1000:.1f} ms, max {m * 1000:.1f} ms, {n} requests" for p, m, n in windows]
    if windows[-1][0] >= 0.010 and idle_p99 >= 0.005:
        pytest.skip(f"the machine is too loaded to measure 10 ms: idle p99 {idle_p99 * 1000:.1f} ms; {shown}")
    assert windows[-1][0] < 0.010, f"/health/live over 10 ms p99 in every window: {shown}"


def _probe(port: int, seconds: float) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(port), str(seconds)], capture_output=True, text=True, timeout=seconds + 20
    )
    assert out.returncode == 0, out.stderr
    latencies: list[float] = json.loads(out.stdout)
    return latencies


WINDOWS = 3
WINDOW_S = 3.0


async def _hostile_load(base_url: str, slow_host: SlowHost, until: float) -> list[int]:
    """Four clients sending URL parts until ``until`` (about 150 requests a second): file URLs (refused),
    image URLs (passed on to the provider)."""
    statuses: list[int] = []

    async def client(c: httpx.AsyncClient, i: int) -> None:
        j = 0
        while j < 2 or time.monotonic() < until:
            parts = [file_part(slow_host.url(f"{i}-{j}.pdf")), image_part(slow_host.url(f"{i}-{j}.png"))]
            r = await c.post("/v1/chat/completions", json=ask(parts[j % 2 :], stream=j % 3 == 0))
            statuses.append(r.status_code)
            j += 1
            await asyncio.sleep(0.02)  # a steady stream, not a CPU race with the gateway on 2 shared cores

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        await asyncio.gather(*(client(c, i) for i in range(4)))
    return statuses


def _fill(part: Any, url: str) -> Any:
    if isinstance(part, dict):
        return {k: _fill(v, url) for k, v in part.items()}
    return part.replace("{url}", url) if isinstance(part, str) else part


# -- the policies, as LiteLLM's transformations were captured (content_urls.py) ---------------------


def test_policies_per_provider() -> None:
    assert policy_for("openai/gpt-4o-mini") == OPENAI_WIRE
    assert policy_for("openai/anything", "http://127.0.0.1:9/v1") == OPENAI_WIRE
    assert policy_for("anthropic/claude-3-5-sonnet-20240620") == ANTHROPIC
    assert policy_for("ollama/llava") == NO_URLS
    assert policy_for("demo/demo") == NO_URLS


def test_policy_checks() -> None:
    def refused(policy: Any, parts: list[dict[str, Any]]) -> str | None:
        try:
            policy.check(ask(parts)["messages"])
        except Exception as exc:  # InvalidRequest
            return str(getattr(exc, "param", None))
        return None

    https_image, http_image = image_part("https://h/i.png"), image_part("http://h/i.png")
    data_image = image_part("data:image/png;base64,iVBORw0KGgo=")
    assert refused(OPENAI_WIRE, [https_image, http_image, data_image]) is None
    assert refused(OPENAI_WIRE, [file_part("https://h/d.pdf")]) == "messages[0].content[1].file.file_id"
    assert refused(OPENAI_WIRE, [file_part("file-abc123")]) is None  # an uploaded file's id
    assert refused(ANTHROPIC, [https_image, file_part("https://h/d.pdf")]) is None
    assert refused(ANTHROPIC, [http_image]) == "messages[0].content[1].image_url.url"
    assert refused(NO_URLS, [https_image]) == "messages[0].content[1].image_url.url"
    assert refused(NO_URLS, [data_image, {"type": "text", "text": "see https://example.com"}]) is None
    string_image = {"type": "image_url", "image_url": "HTTPS://h/i.png"}
    assert list(remote_urls(ask([string_image])["messages"])) == [
        ("messages[0].content[1].image_url", "HTTPS://h/i.png", "image")
    ]


async def test_litellms_own_usage_estimate_fetches_nothing(fake_provider: FakeProvider, slow_host: SlowHost) -> None:
    """A provider that sends no usage makes LiteLLM's full path count the prompt itself
    (``token_counter``, which can fetch image URLs to size them): captured, it does not fetch."""
    fake_provider.set_behaviour("no_usage", Behaviour(no_usage=True))
    data = settings_dict(fake_provider.base_url, fast_path=False)
    data["models"]["deployments"].append(
        {"name": "no_usage", "litellm_model": "openai/no_usage", "api_base": fake_provider.base_url, "fast_path": False}
    )
    gateway = ServerThread(settings_from_dict(data, environ={})).start()
    try:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as c:
            for stream in (True, False):
                body = ask([image_part(slow_host.url("sized.png"))], model="no_usage", stream=stream)
                r = await c.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
    finally:
        gateway.stop()
    assert slow_host.connections == 0
