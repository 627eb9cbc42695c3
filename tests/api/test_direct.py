"""The routes served beside Litestar's pipeline (app/routes/direct.py: chat completions, Responses,
Messages, embeddings) answer every request as the router's path does: compared, request by request,
status, headers in order and body, with a gateway whose CORS configuration keeps them on Litestar's
router."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.routes.direct import DirectRoutes
from tests.conftest import ServerThread, settings_dict, settings_from_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body


def _server(fake_provider: FakeProvider, **server: Any) -> ServerThread:
    data = settings_dict(fake_provider.base_url, server=server)
    data["models"]["deployments"].append(
        {
            "name": "embed",
            "litellm_model": "openai/embed",
            "api_base": fake_provider.base_url,
            "info": {"mode": "embedding"},
        }
    )
    return ServerThread(settings_from_dict(data, environ={})).start()


@pytest.fixture(scope="module")
def pair(fake_provider: FakeProvider) -> Iterator[tuple[ServerThread, ServerThread]]:
    """The gateway, and the same with CORS configured: its routes go through Litestar's router."""
    direct = _server(fake_provider)
    routed = _server(fake_provider, cors_origins=["https://app.example"])
    yield direct, routed
    direct.stop()
    routed.stop()


def _served_directly(server: ServerThread) -> bool:
    return isinstance(server.app.asgi_handler.app, DirectRoutes)  # type: ignore[attr-defined]


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
    ("get", "/v1/messages", {}, b""),
]


def _message(model: str, **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


CASES += [
    ("messages json", "/v1/messages", {}, _message("normal")),
    ("messages sse", "/v1/messages", {}, _message("normal", stream=True)),
    ("messages api path", "/api/messages", {}, _message("normal")),
    ("messages provider error", "/v1/messages", {}, _message("rate_limited", stream=True)),
    ("messages overloaded", "/v1/messages", {}, _message("overloaded")),
    ("messages unknown model", "/v1/messages", {}, _message("nope")),
    ("messages bad json", "/v1/messages", {}, b'{"model": "normal", "messages": ['),
    ("messages bad field", "/v1/messages", {}, b'{"model": "normal", "max_tokens": 1, "messages": "x"}'),
    ("messages content type", "/v1/messages", {"Content-Type": "text/plain"}, b"{}"),
    ("messages too large", "/v1/messages", {}, _message("normal", x="a" * 70_000)),
    ("messages bad host", "/v1/messages", {"Host": "bad host/"}, _message("normal")),
    ("messages trailing slash", "/v1/messages/", {}, _message("normal")),
    ("count tokens", "/v1/messages/count_tokens", {}, _message("normal")),
    ("responses json", "/v1/responses", {}, json.dumps({"model": "normal", "input": "hi"}).encode()),
    ("responses sse", "/v1/responses", SSE, json.dumps({"model": "normal", "input": "hi", "stream": True}).encode()),
    ("responses bad field", "/v1/responses", {}, b'{"model": "normal", "input": 3}'),
    ("responses provider error", "/v1/responses", {}, json.dumps({"model": "rate_limited", "input": "hi"}).encode()),
    (
        "responses sse provider error",
        "/v1/responses",
        SSE,
        json.dumps({"model": "rate_limited", "input": "hi", "stream": True}).encode(),
    ),
    ("embeddings chat model", "/v1/embeddings", {}, json.dumps({"model": "normal", "input": "hi"}).encode()),
    ("embeddings bad field", "/v1/embeddings", {}, b'{"model": "normal", "input": []}'),
    ("embeddings bad json", "/api/embeddings", {}, b'{"model": '),
    ("embeddings", "/v1/embeddings", {}, json.dumps({"model": "embed", "input": "hi"}).encode()),
    # An answer over the compression threshold (httpx asks for gzip): compressed the same way.
    ("embeddings gzip", "/v1/embeddings", {}, json.dumps({"model": "embed", "input": ["a"] * 40}).encode()),
    (
        "embeddings identity",
        "/v1/embeddings",
        {"Accept-Encoding": "identity"},
        json.dumps({"model": "embed", "input": ["a"] * 40}).encode(),
    ),
]
#: Keys whose values differ between two answers to the same request (ids, clocks).
_VARYING = frozenset({"id", "created", "created_at", "completed_at", "item_id", "response_id"})
#: Response headers whose values differ between two answers (ids, clocks, the length of a body with ids).
_VARYING_HEADERS = frozenset(
    {b"date", b"x-request-id", b"request-id", b"x-stream-id", b"x-response-id", b"content-length"}
)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VARYING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _shape(response: httpx.Response) -> tuple[Any, ...]:
    """What must match: status, content type, rate/cache headers, and the body without its ids."""
    headers = response.headers
    kept = tuple((k, headers.get(k)) for k in ("content-type", "x-cache", "retry-after", "content-encoding"))
    body = response.content
    if headers.get("content-type", "").startswith("application/json"):
        return response.status_code, kept, _strip(response.json())
    lines = [line for line in body.decode().splitlines() if not line.startswith("id: ")]
    events = [_strip(json.loads(line[6:])) for line in lines if line.startswith("data: {")]
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
    # Every header, in the order sent (the direct route writes a plain answer's start itself).
    assert [_header(h) for h in answers[0].headers.raw] == [_header(h) for h in answers[1].headers.raw]


def _header(header: tuple[bytes, bytes]) -> tuple[bytes, bytes | None]:
    name, value = header
    return name.lower(), None if name.lower() in _VARYING_HEADERS else value
