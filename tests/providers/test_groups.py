"""Deployment groups, retries, cooldowns and fallbacks (API.md 6), on both provider paths.

Every test runs against real uvicorn and a fake OpenAI-compatible provider over real HTTP. Group
members are told apart by the upstream model name the fake records (each member asks for its own),
and the fake's behaviour per model name says how each member fails.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from app.config.settings import settings_from_dict
from loadtests.processes import GatewayProcess
from tests.api.test_websocket import create, text_of, until_end
from tests.conftest import TEST_STREAMING, ServerThread
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.helpers.sse import stream_chat

WAIT_S = 10.0
NORMAL_TEXT = "Hello, world! This is the fake provider."


def _error(status: int, retry_after: str | None = None) -> Behaviour:
    return Behaviour(kind="error", status=status, error_type="server_error", retry_after=retry_after)


#: Upstream model name -> behaviour; each member of a group asks for its own name.
BEHAVIOURS = {
    "pair_a": Behaviour(),
    "pair_b": Behaviour(),
    "cd_bad": _error(500),
    "cd_ok": Behaviour(),
    "dead_a": _error(500),
    "dead_b": _error(503),
    "fb_bad": _error(502),
    "fb_good": Behaviour(),
    "drop_first": Behaviour(kind="drop"),
    "strict_400": Behaviour(kind="error", status=400, error_type="invalid_request_error", error_code="invalid_value"),
    "ra_short": _error(429, retry_after="1"),
    "ra_long": _error(429, retry_after="30"),
    "busy_a": Behaviour(kind="hang"),
    "busy_b": Behaviour(kind="hang"),
    "lat_slow": Behaviour(first_delay_s=0.4, gap_s=0.0),
    "lat_fast": Behaviour(first_delay_s=0.0, gap_s=0.0),
}


def dep(name: str, upstream: str, base: str, fast: bool, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "id": upstream,
        "litellm_model": f"openai/{upstream}",
        "api_base": base,
        "timeout_s": 5,
        "fast_path": fast,
        **extra,
    }


def gateway_settings(base: str, fast: bool, routing: str = "simple-shuffle") -> dict[str, Any]:
    deployments = [
        dep("pair", "pair_a", base, fast),
        dep("pair", "pair_b", base, fast),
        dep("cd", "cd_bad", base, fast, num_retries=1),
        dep("cd", "cd_ok", base, fast, num_retries=1),
        dep("dead", "dead_a", base, fast, num_retries=1),
        dep("dead", "dead_b", base, fast, num_retries=1),
        dep("fb", "fb_bad", base, fast, num_retries=1, fallbacks=["fb_target"]),
        dep("fb_target", "fb_good", base, fast),
        dep("dropping", "drop_first", base, fast, num_retries=2, fallbacks=["pair"]),
        dep("strict", "strict_400", base, fast, num_retries=2, fallbacks=["pair"]),
        dep("ra_short", "ra_short", base, fast, num_retries=1),
        dep("ra_long", "ra_long", base, fast, num_retries=1),
        dep("busy", "busy_a", base, fast),
        dep("busy", "busy_b", base, fast),
        dep("lat", "lat_slow", base, fast),
        dep("lat", "lat_fast", base, fast),
    ]
    return {
        "server": {"env": "development", "log_level": "warning"},
        "streaming": {**TEST_STREAMING, "status_window_s": 3.0, "first_token_timeout_s": 5, "idle_timeout_s": 5},
        "models": {"routing": routing, "allowed_fails": 1, "cooldown_s": 60, "deployments": deployments},
    }


@pytest.fixture(scope="module")
def group_fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    for name, behaviour in BEHAVIOURS.items():
        provider.set_behaviour(name, behaviour)
    yield provider
    provider.stop()


def start_gateway(fake: FakeProvider, fast: bool, routing: str = "simple-shuffle") -> ServerThread:
    return ServerThread(settings_from_dict(gateway_settings(fake.base_url, fast, routing), {})).start()


@pytest.fixture(scope="module", params=["fast", "full"])
def groups(request: pytest.FixtureRequest, group_fake: FakeProvider) -> Iterator[ServerThread]:
    server = start_gateway(group_fake, request.param == "fast")
    yield server
    server.stop()


@pytest.fixture
async def client(groups: ServerThread) -> Any:
    async with httpx.AsyncClient(base_url=groups.base_url, timeout=WAIT_S) as c:
        yield c


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def upstream_requests(metrics: str, model: str) -> dict[tuple[str, str], float]:
    """chat_upstream_requests_total for ``model``: (deployment, outcome) -> count."""
    found: dict[tuple[str, str], float] = {}
    for line in metrics.splitlines():
        if line.startswith("chat_upstream_requests_total{") and f'model="{model}"' in line:
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            key = (labels["deployment"].strip('"'), labels["outcome"].strip('"'))
            found[key] = float(line.rsplit(" ", 1)[1])
    return found


async def test_a_group_is_one_model_listed_once(client: httpx.AsyncClient) -> None:
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert ids.count("pair") == 1
    info = {m["id"]: m for m in (await client.get("/api/models")).json()["data"]}
    assert info["pair"]["deployments"] == 2
    assert "deployments" not in info["fb_target"]  # a lone deployment keeps API.md's field list


async def test_two_deployments_share_the_load(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    before = group_fake.calls("pair_a"), group_fake.calls("pair_b")
    for _ in range(16):
        response = await client.post("/v1/chat/completions", json=body("pair"))
        assert response.status_code == 200
    a, b = group_fake.calls("pair_a") - before[0], group_fake.calls("pair_b") - before[1]
    assert a + b == 16
    assert a > 0 and b > 0  # 2 * 0.5**16 chance of a false failure


async def test_failing_member_is_retried_elsewhere_then_rests(
    client: httpx.AsyncClient, group_fake: FakeProvider
) -> None:
    bad_before, ok_before = group_fake.calls("cd_bad"), group_fake.calls("cd_ok")
    counts_before = upstream_requests((await client.get("/metrics")).text, "cd")
    for i in range(12):
        if i % 2:
            response = await client.post("/v1/chat/completions", json=body("cd"))
            assert response.status_code == 200, response.text
        else:
            result = await stream_chat(client, body("cd", stream=True))
            assert result.status == 200 and result.content() == NORMAL_TEXT
    bad = group_fake.calls("cd_bad") - bad_before
    # allowed_fails = 1: the second failure within the minute sends it to rest for 60 s.
    assert bad <= 2
    assert group_fake.calls("cd_ok") - ok_before == 12
    ready = await client.get("/health/ready")
    if bad == 2:
        assert ready.json()["cooling_down"]["cd"] == ["cd_bad"]
    assert ready.status_code == 200  # another member of the group is usable
    counts = upstream_requests((await client.get("/metrics")).text, "cd")
    assert counts[("cd_ok", "ok")] - counts_before.get(("cd_ok", "ok"), 0) == 12
    assert counts.get(("cd_bad", "retried"), 0) - counts_before.get(("cd_bad", "retried"), 0) == bad


async def test_a_group_resting_whole_answers_503_at_once(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    before = group_fake.calls("dead_a") + group_fake.calls("dead_b")
    for _ in range(2):  # each member fails twice: both rest
        response = await client.post("/v1/chat/completions", json=body("dead"))
        assert response.status_code in (502, 503)
    calls = group_fake.calls("dead_a") + group_fake.calls("dead_b")
    assert calls - before == 4
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=body("dead"))
    assert time.monotonic() - started < 0.5
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_overloaded"
    result = await stream_chat(client, body("dead", stream=True))
    assert result.status == 503
    assert group_fake.calls("dead_a") + group_fake.calls("dead_b") == calls  # nobody was called
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert sorted(ready.json()["cooling_down"]["dead"]) == ["dead_a", "dead_b"]


async def test_fallback_for_json(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    before = upstream_requests((await client.get("/metrics")).text, "fb")
    response = await client.post("/v1/chat/completions", json=body("fb"))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == NORMAL_TEXT
    counts = upstream_requests((await client.get("/metrics")).text, "fb")
    # The group of one retried itself once, then fell back.
    assert counts[("fb_bad", "retried")] - before.get(("fb_bad", "retried"), 0) == 1
    assert counts[("fb_bad", "fallback")] - before.get(("fb_bad", "fallback"), 0) == 1
    assert upstream_requests((await client.get("/metrics")).text, "fb_target")[("fb_good", "ok")] >= 1


async def test_fallback_while_streaming_sse(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    before = group_fake.calls("fb_bad")
    result = await stream_chat(client, body("fb", stream=True))
    assert result.status == 200
    assert result.content() == NORMAL_TEXT
    assert group_fake.calls("fb_bad") - before == 2  # the first attempt and its one retry


async def test_fallback_while_streaming_websocket(groups: ServerThread, group_fake: FakeProvider) -> None:
    async with connect(groups.ws_url, subprotocols=["chat.v1"], open_timeout=WAIT_S) as ws:  # type: ignore[list-item]
        await ws.send(create("f", model="fb"))
        frames = await until_end(ws, "f", timeout=WAIT_S)
    assert frames[-1]["type"] == "chat.completion.done"
    assert text_of(frames) == NORMAL_TEXT


async def test_no_retry_after_the_first_chunk(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    pairs = group_fake.calls("pair_a") + group_fake.calls("pair_b")
    before = group_fake.calls("drop_first")
    result = await stream_chat(client, body("dropping", stream=True))
    assert result.status == 200
    errors = [e for e in result.data_events if e.event == "error"]
    assert errors, "the break-off is an in-band error"
    assert group_fake.calls("drop_first") - before == 1
    assert group_fake.calls("pair_a") + group_fake.calls("pair_b") == pairs  # no silent switch to the fallback


async def test_client_errors_are_never_retried(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    pairs = group_fake.calls("pair_a") + group_fake.calls("pair_b")
    for stream in (False, True):
        before = group_fake.calls("strict_400")
        response = await client.post("/v1/chat/completions", json=body("strict", stream=stream))
        assert response.status_code == 400
        assert group_fake.calls("strict_400") - before == 1
    assert group_fake.calls("pair_a") + group_fake.calls("pair_b") == pairs  # no fallback either


async def test_short_retry_after_is_waited_out(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    before = len(group_fake.requests)
    response = await client.post("/v1/chat/completions", json=body("ra_short"))
    assert response.status_code == 429
    calls = [r for r in group_fake.requests[before:] if r.model == "ra_short"]
    assert len(calls) == 2  # a group of one retries itself
    assert calls[1].received_at - calls[0].received_at >= 0.9


async def test_long_retry_after_is_not_waited_for(client: httpx.AsyncClient, group_fake: FakeProvider) -> None:
    before = group_fake.calls("ra_long")
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=body("ra_long"))
    assert response.status_code == 429
    assert time.monotonic() - started < 2.0
    assert group_fake.calls("ra_long") - before == 1


# -- selection strategies, each on a gateway of its own ----------------------------------------


@pytest.mark.parametrize("path", ["fast", "full"])
async def test_least_busy_picks_the_member_with_fewer_calls_in_flight(group_fake: FakeProvider, path: str) -> None:
    server = start_gateway(group_fake, path == "fast", routing="least-busy")
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S) as client:
            tasks: list[asyncio.Task[Any]] = []
            try:
                for n in range(1, 7):
                    before = group_fake.calls("busy_a") + group_fake.calls("busy_b")
                    tasks.append(asyncio.create_task(client.post("/v1/chat/completions", json=body("busy"))))
                    deadline = time.monotonic() + WAIT_S
                    while group_fake.calls("busy_a") + group_fake.calls("busy_b") == before:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.01)
                    a, b = group_fake.calls("busy_a"), group_fake.calls("busy_b")
                    # Both hang: every call stays in flight, so least-busy alternates.
                    assert abs(a - b) <= 1, (n, a, b)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["fast", "full"])
async def test_latency_based_picks_the_faster_member(group_fake: FakeProvider, path: str) -> None:
    server = start_gateway(group_fake, path == "fast", routing="latency-based")
    slow_before, fast_before = group_fake.calls("lat_slow"), group_fake.calls("lat_fast")
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S) as client:
            for _ in range(8):
                result = await stream_chat(client, body("lat", stream=True))
                assert result.status == 200
    finally:
        server.stop()
    # An unused member counts as 0 s and is tried once; after that the faster one wins every time.
    assert group_fake.calls("lat_slow") - slow_before == 1
    assert group_fake.calls("lat_fast") - fast_before == 7


# -- the access log, from a real `python -m app` process --------------------------------------


def test_access_log_names_the_deployment_and_the_attempts(tmp_path: Path, group_fake: FakeProvider) -> None:
    lines = ['[server]\nenv = "production"\n', "[models]\n"]
    for name, upstream, extra in [
        ("fb", "fb_bad", 'num_retries = 1\nfallbacks = ["fb_target"]\n'),
        ("fb_target", "fb_good", ""),
    ]:
        lines.append(
            f'[[models.deployments]]\nname = "{name}"\nid = "{upstream}"\nlitellm_model = "openai/{upstream}"\n'
            f'api_base = "{group_fake.base_url}"\n{extra}\n'
        )
    gateway = GatewayProcess(tmp_path, "".join(lines), {"CHAT_SERVER__LOG_LEVEL": "info"})  # its request lines
    log = gateway.child.log
    try:
        gateway.wait_ready(60)
        with httpx.Client(base_url=gateway.base_url, timeout=WAIT_S) as client:
            assert client.post("/v1/chat/completions", json=body("fb")).status_code == 200
            with client.stream("POST", "/v1/chat/completions", json=body("fb", stream=True)) as reply:
                assert reply.status_code == 200
                reply.read()
    finally:
        gateway.stop()
    records = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "request" and record.get("model") == "fb":
            records.append(record)
    assert len(records) == 2, log.read_text()[-2000:]
    for record in records:
        # Two attempts on fb_bad (one retry), then the fallback answered.
        assert record["deployment"] == "fb_good"
        assert record["attempts"] == 3
