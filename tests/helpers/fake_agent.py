"""A scripted OpenAI-wire provider for agent loops (Claude Code through the Messages API).

``tests/fake_provider.py`` answers by model name; an agent needs an answer that depends on the
conversation: model ``agent`` asks for the ``Bash`` tool with a harmless command on the first
turn and, once the conversation holds that tool's result, answers with what the command printed.
Model ``oneliner`` answers one line. Every request body is kept for the test to read. Served by
uvicorn in a daemon thread over real HTTP, streamed or JSON as asked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MARKER = "gateway-bash-ok-42"
COMMAND = f"echo {MARKER}"
ONE_LINE = "pong from the fake provider"


def _tool_result(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "tool":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
        if message.get("role") == "user":
            return None
    return None


def reply_for(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant's turn: ``{"content": str}`` or ``{"tool": (name, arguments)}``."""
    if body.get("model") == "agent":
        result = _tool_result(body.get("messages") or [])
        if result is None:
            arguments = json.dumps({"command": COMMAND, "description": "Print a marker"})
            return {"tool": ("Bash", arguments)}
        return {"content": f"The command printed: {result.strip()}"}
    return {"content": ONE_LINE}


class FakeAgentProvider:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def start(self, timeout: float = 5.0) -> FakeAgentProvider:
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
                raise RuntimeError("the fake agent provider did not start")
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
        if scope["method"] != "POST" or not scope["path"].rstrip("/").endswith("/chat/completions"):
            await _json(send, 404, {"error": {"message": "unknown route", "type": "invalid_request_error"}})
            return
        body = json.loads(raw or b"{}")
        with self._lock:
            self.requests.append(body)
        reply = reply_for(body)
        if body.get("stream"):
            await _stream(send, body, reply)
        else:
            await _json(send, 200, _completion(body, reply))


def _message(reply: dict[str, Any]) -> dict[str, Any]:
    if "tool" in reply:
        name, arguments = reply["tool"]
        call = {"id": "call_agent_1", "type": "function", "function": {"name": name, "arguments": arguments}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": reply["content"]}


def _completion(body: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    finish = "tool_calls" if "tool" in reply else "stop"
    return {
        "id": "chatcmpl-agent",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": _message(reply), "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


async def _stream(send: Send, body: dict[str, Any], reply: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    base = {
        "id": "chatcmpl-agent",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model"),
    }

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    if "tool" in reply:
        name, arguments = reply["tool"]
        start = {"index": 0, "id": "call_agent_1", "type": "function", "function": {"name": name, "arguments": ""}}
        events.append(event({"tool_calls": [start]}))
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            events.append(event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        events.append(event({}, "tool_calls"))
    else:
        for i, word in enumerate(reply["content"].split(" ")):
            events.append(event({"content": word if i == 0 else " " + word}))
        events.append(event({}, "stop"))
    usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    events.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    for data in events:
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
