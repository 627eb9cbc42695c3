"""Metrics (API.md 5): every contract metric with its labels, counts that match the traffic, bounded series."""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from app.observability.metrics import Metrics
from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body, stream_chat

CONTRACT: dict[str, tuple[str, set[str]]] = {
    "http_server_request_duration_seconds": ("histogram", {"method", "route", "status_code"}),
    "chat_time_to_first_byte_seconds": ("histogram", {"transport", "model"}),
    "chat_time_to_first_token_seconds": ("histogram", {"transport", "model"}),
    "chat_stream_duration_seconds": ("histogram", {"transport", "model", "outcome"}),
    "chat_stream_chunks_total": ("counter", {"transport", "model"}),
    "chat_streams_active": ("gauge", {"transport"}),
    "chat_stream_outcomes_total": ("counter", {"transport", "model", "outcome"}),
    "chat_tokens_total": ("counter", {"model", "direction"}),
    "chat_upstream_errors_total": ("counter", {"model", "code"}),
    "chat_upstream_requests_total": ("counter", {"model", "deployment", "outcome"}),
    "chat_cache_requests_total": ("counter", {"result"}),
    "chat_websocket_connections_active": ("gauge", set()),
}


@pytest.fixture(scope="module")
def metered(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    """A server of its own, so that counts start at zero whatever other modules did."""
    server = ServerThread(make_settings(fake_provider.base_url)).start()
    yield server
    server.stop()


@pytest.fixture
async def mclient(metered: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=metered.base_url, timeout=10) as c:
        yield c


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


def value(text: str, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples(text) if n == name and all(lab.get(k) == x for k, x in labels.items()))


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def wait_gauges_zero(client: httpx.AsyncClient) -> str:
    deadline = time.monotonic() + 5
    while True:
        text = await scrape(client)
        active = value(text, "chat_streams_active") + value(text, "chat_websocket_connections_active")
        if active == 0 or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.02)


async def drive_traffic(client: httpx.AsyncClient, server: ServerThread, fake: FakeProvider) -> dict[str, Any]:
    """Known traffic: what each request should add to the counters."""
    # JSON: two completed, one provider error (429) and one whole-call timeout.
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=chat_body("normal"))).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat_body("rate_limited"))).status_code == 429
    assert (await client.post("/v1/chat/completions", json=chat_body("hang"))).status_code == 504
    # SSE: three completed (one with usage), one error mid-stream, one first-token timeout, one disconnect.
    for extra in ({}, {}, {"stream_options": {"include_usage": True}}):
        assert (await stream_chat(client, chat_body("normal", stream=True, **extra))).status == 200
    assert (await stream_chat(client, chat_body("drop", stream=True))).data_events[-1].event == "error"
    assert (await stream_chat(client, chat_body("hang", stream=True))).data_events[-1].event == "error"
    async with client.stream("POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True)) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break
    await fake.await_disconnect(fake.requests[-1], timeout=3)
    # WebSocket: one completed, one cancelled.
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "a", "request": chat_body("normal")}))
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "b", "request": chat_body("slow_gap")}))
        await ws.send(json.dumps({"type": "chat.completion.cancel", "id": "b"}))
        done: set[str] = set()
        while done != {"a", "b"}:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if frame["type"] == "chat.completion.done":
                done.add(frame["id"])
    return {}


async def test_metrics_after_json_sse_and_websocket_traffic(
    mclient: httpx.AsyncClient, metered: ServerThread, fake: FakeProvider
) -> None:
    await drive_traffic(mclient, metered, fake)
    text = await wait_gauges_zero(mclient)
    found = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in CONTRACT.items():
        family_name = name.removesuffix("_total")
        family = found.get(family_name) or found.get(name)
        assert family is not None, f"{name} missing"
        assert family.type == kind, (name, family.type)
        for s in family.samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)

    out = lambda **k: value(text, "chat_stream_outcomes_total", **k)  # noqa: E731
    assert out(transport="json", outcome="completed") == 2
    assert out(transport="json", outcome="upstream_error") == 1
    assert out(transport="json", outcome="timeout") == 1
    assert out(transport="sse", outcome="completed") == 3
    assert out(transport="sse", outcome="upstream_error") == 1
    assert out(transport="sse", outcome="timeout") == 1
    assert out(transport="sse", outcome="client_disconnected") == 1
    assert out(transport="websocket", outcome="completed") == 1
    assert out(transport="websocket", outcome="cancelled") == 1

    # Every stream that wrote anything has one TTFB observation (the disconnected one wrote a chunk too).
    ttfb = lambda t: value(text, "chat_time_to_first_byte_seconds_count", transport=t)  # noqa: E731
    assert ttfb("sse") == 6
    assert ttfb("websocket") == 2
    assert ttfb("json") == 4  # every JSON call answered, errors included
    assert value(text, "chat_stream_duration_seconds_count", transport="sse") == 6
    assert value(text, "chat_time_to_first_token_seconds_count", transport="sse", model="normal") == 3
    assert value(text, "chat_stream_chunks_total", transport="sse", model="normal") >= 33
    assert value(text, "chat_tokens_total", model="normal", direction="output") >= 10 * 6
    assert value(text, "chat_tokens_total", model="normal", direction="input") >= 7 * 6
    assert value(text, "chat_upstream_errors_total", model="rate_limited", code="rate_limit_exceeded") == 1
    assert value(text, "chat_upstream_errors_total", model="drop", code="upstream_unavailable") == 1
    assert value(text, "chat_upstream_errors_total", model="hang", code="upstream_timeout") == 2
    assert value(text, "chat_streams_active") == 0
    assert value(text, "chat_websocket_connections_active") == 0
    assert (
        value(text, "http_server_request_duration_seconds_count", route="/v1/chat/completions", status_code="200") >= 5
    )


async def test_series_do_not_grow_with_random_models_and_paths(mclient: httpx.AsyncClient) -> None:
    rnd = random.Random(7)

    def word() -> str:
        return "".join(rnd.choices(string.ascii_lowercase, k=10))

    async def burst() -> None:
        for _ in range(250):
            await mclient.post("/v1/chat/completions", json=chat_body(f"{word()}/{word()}"))
            await mclient.get(f"/{word()}/{word()}")

    await burst()
    before = len(samples(await scrape(mclient)))
    await asyncio.gather(burst(), burst())
    after_text = await scrape(mclient)
    assert len(samples(after_text)) == before
    assert not re.search(r'model="[a-z]{10}/', after_text)


def test_instruments_are_per_app() -> None:
    a, b = Metrics(), Metrics()
    a.cache_result("hit")
    assert (
        b"chat_cache_requests_total" not in b.render().split(b"\n# EOF")[0]
        or value(b.render().decode(), "chat_cache_requests_total", result="hit") == 0
    )
    assert value(a.render().decode(), "chat_cache_requests_total", result="hit") == 1
    a.shutdown()
    b.shutdown()


def test_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "config/grafana/chat-gateway.json").read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query") and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert len(exprs) >= 10
    names = {m for e in exprs for m in re.findall(r"\b((?:chat|http)_[a-z_]+)\b", e)}
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    limits = {"chat_rate_limited_total", "chat_spend_usd_total"}  # API.md 5; series exist once a key is limited
    assert base <= set(CONTRACT) | limits, base - set(CONTRACT) - limits
    assert limits <= base
    assert {
        "chat_time_to_first_byte_seconds",
        "chat_time_to_first_token_seconds",
        "chat_stream_outcomes_total",
        "chat_cache_requests_total",
        "chat_websocket_connections_active",
    } <= base
