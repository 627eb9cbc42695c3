"""A client that leaves closes the upstream call at once: before the first token, mid-stream, mid-JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerThread
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body

#: The issue's target: the provider sees its connection closed within 100 ms of the client leaving.
CLOSE_WITHIN_S = 0.1


async def _cancel_after_upstream_started(
    client: httpx.AsyncClient, fake: FakeProvider, body: dict, path: str = "/v1/chat/completions"
) -> float:
    request = asyncio.create_task(client.post(path, json=body))
    record = await fake.await_request(1, timeout=5)
    assert record.disconnected_at is None
    left_at = time.monotonic()
    request.cancel()  # httpx closes the connection of a cancelled request
    with pytest.raises(asyncio.CancelledError):
        await request
    closed_at = await fake.await_disconnect(record, timeout=3)
    return closed_at - left_at


async def _open_streams_and_tasks(gateway: ServerThread) -> tuple[int, int]:
    """Streams the gateway counts as open, and tasks alive on its loop (besides the one asking)."""

    async def count() -> tuple[int, int]:
        return sum(gateway.app.state.metrics.active.values()), len(asyncio.all_tasks()) - 1

    return gateway.call(count())


async def _settled_tasks(gateway: ServerThread, timeout: float = 5.0) -> int:
    """Tasks on the gateway's loop once no stream is open and their count has held for 0.3 s (a
    task of an earlier test may still be ending: counted after it is gone, never while it runs)."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while True:
        streams, tasks = await _open_streams_and_tasks(gateway)
        seen = [*seen, tasks][-6:] if streams == 0 else []
        if len(seen) == 6 and len(set(seen)) == 1:
            return tasks
        assert time.monotonic() < deadline, f"the gateway never settled: {streams} streams open, tasks {seen}"
        await asyncio.sleep(0.05)


async def test_disconnect_before_first_token_within_status_window(
    client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread
) -> None:
    delay = await _cancel_after_upstream_started(client, fake, chat_body("hang", stream=True))
    assert delay < CLOSE_WITHIN_S, delay


async def test_disconnect_before_first_token_after_headers(
    client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread
) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=chat_body("hang", stream=True)) as response:
        assert response.status_code == 200  # the status window (0.3 s) passed: headers are out
        record = await fake.await_request(1, timeout=5)
        left_at = time.monotonic()
    closed_at = await fake.await_disconnect(record, timeout=3)
    assert closed_at - left_at < CLOSE_WITHIN_S


async def test_disconnect_mid_stream(client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True)) as response:
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data:"):
                break
        record = fake.requests[0]
        left_at = time.monotonic()
    closed_at = await fake.await_disconnect(record, timeout=3)
    assert closed_at - left_at < CLOSE_WITHIN_S
    assert record.completed_at is None


async def test_disconnect_during_silence(client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=chat_body("silent", stream=True)) as response:
        async for line in response.aiter_lines():
            if line.startswith(": keep-alive"):
                break
        record = fake.requests[0]
        left_at = time.monotonic()
    closed_at = await fake.await_disconnect(record, timeout=3)
    assert closed_at - left_at < CLOSE_WITHIN_S


async def test_disconnect_during_json_call(
    client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread
) -> None:
    delay = await _cancel_after_upstream_started(client, fake, chat_body("hang"))
    assert delay < CLOSE_WITHIN_S, delay


async def test_nothing_left_open_after_disconnects(
    client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread
) -> None:
    tasks_before = await _settled_tasks(gateway)
    fake.reset()
    for _ in range(5):
        async with client.stream("POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break
    assert len(fake.requests) == 5
    for record in fake.requests:
        await fake.await_disconnect(record, timeout=3)  # every provider call was closed
    # Exactly as many tasks as before, both counted settled: a task left behind by a disconnect shows.
    assert await _settled_tasks(gateway) == tasks_before


async def test_the_disconnect_watch_is_no_task_under_the_gateways_server(
    gateway: ServerThread, fake: FakeProvider
) -> None:
    # The protocol reports the connection's loss to the request's hook (transport/disconnect.py):
    # while a JSON request waits on the provider, no watcher task runs beside the request's own.
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body("hang")))
        record = await fake.await_request(1, timeout=5)

        async def watchers() -> list[str]:
            return [repr(t.get_coro()) for t in asyncio.all_tasks() if "DisconnectWatch" in repr(t.get_coro())]

        assert gateway.call(watchers()) == []
        left_at = time.monotonic()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        closed_at = await fake.await_disconnect(record, timeout=3)
    assert closed_at - left_at < CLOSE_WITHIN_S


def _requests_logged(text: str, route: str, status: str) -> float:
    """How many requests on ``route`` ended with ``status``, from the metrics' request histogram."""
    for family in text_string_to_metric_families(text):
        if family.name == "http_server_request_duration_seconds":
            return sum(
                s.value
                for s in family.samples
                if s.name.endswith("_count")
                and s.labels.get("route") == route
                and s.labels.get("status_code") == status
            )
    return 0.0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body("hang", stream=True)),
        (
            "/v1/messages",
            {"model": "hang", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("/v1/responses", {"model": "hang", "input": "hi", "stream": True}),
    ],
    ids=["chat", "messages", "responses"],
)
async def test_a_client_gone_inside_the_status_window_is_a_499_and_closes_the_provider_call(
    client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread, path: str, body: dict[str, Any]
) -> None:
    # The response waits out the status window before it starts (app/api/status_window.py): a client
    # leaving then still ends the provider call at once and is logged (and counted) as 499.
    before = _requests_logged((await client.get("/metrics")).text, path, "499")
    delay = await _cancel_after_upstream_started(client, fake, body, path)
    assert delay < CLOSE_WITHIN_S, delay
    deadline = time.monotonic() + 5
    while _requests_logged((await client.get("/metrics")).text, path, "499") < before + 1:
        assert time.monotonic() < deadline, "the request was never counted as 499"
        await asyncio.sleep(0.05)
