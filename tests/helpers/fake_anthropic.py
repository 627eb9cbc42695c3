"""A fake Anthropic Messages API provider over real HTTP: it records what reaches it (path, headers,
body) and answers with a thinking block (with its signature), a text block and usage that counts
prompt-cache reads and writes, streamed as Anthropic's events or as one message object; a request
with ``stop_sequences`` is answered as stopped on the first of them."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

THINKING = "Weighing it up."
SIGNATURE = "sig-abc123"
TEXT = "Answer from the Anthropic fake."
USAGE = {"input_tokens": 12, "output_tokens": 6, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 50}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeAnthropic:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def start(self, timeout: float = 5.0) -> FakeAnthropic:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app, interface="asgi3", lifespan="off", log_level="warning", log_config=None, access_log=False
        )
        self._server = server = uvicorn.Server(config)
        threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake Anthropic provider did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = json.loads(raw or b"{}")
        with self._lock:
            self.seen.append(Seen(scope["path"], headers, body))
        if not scope["path"].rstrip("/").endswith("/messages"):
            await _json(send, 404, {"type": "error", "error": {"type": "not_found_error", "message": "no route"}})
            return
        if body.get("stream"):
            await _stream(send, body)
        else:
            await _json(send, 200, _message(body))


def _message(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_fake_anthropic",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [
            {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
            {"type": "text", "text": TEXT},
        ],
        **_stop(body),
        "usage": USAGE,
    }


def _stop(body: dict[str, Any]) -> dict[str, Any]:
    """As if the answer had stopped on the request's first stop sequence, when it gives one."""
    sequences = body.get("stop_sequences")
    if isinstance(sequences, list) and sequences:
        return {"stop_reason": "stop_sequence", "stop_sequence": sequences[0]}
    return {"stop_reason": "end_turn", "stop_sequence": None}


async def _stream(send: Send, body: dict[str, Any]) -> None:
    start = {
        **_message(body),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**USAGE, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": THINKING}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": TEXT}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": _stop(body),
                "usage": {"output_tokens": 6},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for name, data in events:
        frame = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
