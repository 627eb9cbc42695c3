"""The chat route served beside Litestar's pipeline (app/routes/chat_direct.py) answers every request
as the router's path does: compared, request by request, with a gateway whose CORS configuration
keeps the chat route on Litestar's router."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.routes.chat_direct import ChatRoute
from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body


def _server(fake_provider: FakeProvider, **server: Any) -> ServerThread:
    return ServerThread(make_settings(fake_provider.base_url, server=server)).start()


@pytest.fixture(scope="module")
def pair(fake_provider: FakeProvider) -> Iterator[tuple[ServerThread, ServerThread]]:
    """The gateway, and the same with CORS configured: its chat route goes through Litestar's router."""
    direct = _server(fake_provider)
    routed = _server(fake_provider, cors_origins=["https://app.example"])
    yield direct, routed
    direct.stop()
    routed.stop()


def _served_directly(server: ServerThread) -> bool:
    return isinstance(server.app.asgi_handler.app, ChatRoute)  # type: ignore[attr-defined]


SSE = {"Accept": "text/event-stream"}
CASES: list[tuple[str, str, dict[str, str], bytes]] = [
    ("json", "/v1/chat/completions", {}, json.dumps(chat_body("normal")).encode()),
    ("sse", "/v1/chat/completions", SSE, json.dumps(chat_body("normal", stream=True)).encode()),
    ("api path", "/api/chat/completions", {}, json.dumps(chat_body("normal")).encode()),
    ("provider error", "/v1/chat/completions", SSE, json.dumps(chat_body("rate_limited", stream=True)).encode()),
    ("unknown model", "/v1/chat/completions", {}, json.dumps(chat_body("nope")).encode()),
    ("bad json", "/v1/chat/completions", {}, b'{"model": "normal", "messages": ['),
    ("bad field", "/v1/chat/completions", {}, b'{"model": "normal", "messages": "hi"}'),
    ("content type", "/v1/chat/completions", {"Content-Type": "text/plain"}, b"{}"),
    ("too large", "/v1/chat/completions", {}, b'{"model": "normal", "messages": [], "x": "' + b"a" * 70_000 + b'"}'),
    ("bad host", "/v1/chat/completions", {"Host": "bad host/"}, json.dumps(chat_body("normal")).encode()),
    ("trailing slash", "/v1/chat/completions/", {}, json.dumps(chat_body("normal")).encode()),
]


def _shape(response: httpx.Response) -> tuple[Any, ...]:
    """What must match: status, content type, rate/cache headers, and the body without its ids."""
    headers = response.headers
    kept = tuple((k, headers.get(k)) for k in ("content-type", "x-cache", "retry-after", "content-encoding"))
    body = response.content
    if headers.get("content-type", "").startswith("application/json"):
        data = response.json()
        for key in ("id", "created"):
            data.pop(key, None) if isinstance(data, dict) else None
        return response.status_code, kept, data
    lines = [line for line in body.decode().splitlines() if not line.startswith("id: ")]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    for event in events:
        event.pop("id", None)
        event.pop("created", None)
    return response.status_code, kept, events, [line for line in lines if not line.startswith("data: {")]


@pytest.mark.parametrize(("name", "path", "headers", "body"), CASES, ids=[c[0] for c in CASES])
async def test_the_direct_route_answers_as_the_router_does(
    pair: tuple[ServerThread, ServerThread],
    fake: FakeProvider,
    name: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    direct, routed = pair
    assert _served_directly(direct) and not _served_directly(routed)
    answers = []
    for server in pair:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            answers.append(
                await client.post(path, content=body, headers={"Content-Type": "application/json", **headers})
            )
    assert _shape(answers[0]) == _shape(answers[1])
    assert all(answer.headers.get("x-request-id") for answer in answers)
