"""A fake Anthropic Messages API provider over real HTTP: it records what reaches it (path, headers,
body) and answers with a thinking block (with its signature), a text block and usage that counts
prompt-cache reads and writes, streamed as Anthropic's events (with a ``ping``) or as one message
object; a request with ``stop_sequences`` is answered as stopped on the first of them, one that offers
the web search tool as having run one search (its usage's ``server_tool_use``). A few model
names answer otherwise (``TOOL_MODEL``, ``OVERLOADED_MODEL``, ``ERROR_FIRST_MODEL``,
``ERROR_MIDSTREAM_MODEL``)."""

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
        #: Set when a client of SLOW_MODEL's stream (the gateway) closed its connection mid-stream.
        self.left_mid_stream = threading.Event()
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
        if body.get("model") == OVERLOADED_MODEL or (
            body.get("model") in (ERROR_FIRST_MODEL, ERROR_MIDSTREAM_MODEL) and not body.get("stream")
        ):
            await _json(send, 529, OVERLOADED)
        elif body.get("stream") and (body.get("model") == SLOW_MODEL or _last_text(body) == STALL_PROMPT):
            await self._stall(send, receive, body)
        elif body.get("stream"):
            await _stream(send, body)
        else:
            await _json(send, 200, _message(body))

    async def _stall(self, send: Send, receive: Receive, body: dict[str, Any]) -> None:
        """The start of an answer (up to its first thinking delta), then nothing until the client leaves
        (at most STALL_S): what the gateway does with the provider's call when its own client goes."""
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for data in _events(body)[:4]:  # message_start, ping, the thinking block's start and its first delta
            frame = f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        try:
            message = await asyncio.wait_for(receive(), STALL_S)
        except TimeoutError:
            return
        if message["type"] == "http.disconnect":
            self.left_mid_stream.set()


#: Models (the deployment's name after ``anthropic/``) that answer otherwise than with thinking and text.
TOOL_MODEL = "tool-user"  # asks for Bash, then answers from the tool's result
OVERLOADED_MODEL = "overloaded"  # 529 overloaded_error
ERROR_FIRST_MODEL = "error-first"  # a stream whose first event after message_start is an error event
ERROR_MIDSTREAM_MODEL = "error-midstream"  # a stream that reports an error after some text
SLOW_MODEL = "slow"  # a stream that stops after its first text until the client leaves
STALL_PROMPT = "stall"  # a streamed request whose last message says this is answered as SLOW_MODEL's
STALL_S = 30.0
TOOL_ID = "toolu_fake_1"
TOOL_INPUT = {"command": "echo hi"}
PARTIAL = "Partial answer"
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
API_ERROR = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}


def _message(body: dict[str, Any]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
        {"type": "text", "text": TEXT},
    ]
    stop = _stop(body)
    if body.get("model") == TOOL_MODEL:
        result = _tool_result(body)
        if result is None:
            content = [
                {"type": "text", "text": "Let me run it."},
                {"type": "tool_use", "id": TOOL_ID, "name": "Bash", "input": TOOL_INPUT},
            ]
            stop = {"stop_reason": "tool_use", "stop_sequence": None}
        else:
            content = [{"type": "text", "text": f"The command said: {result}"}]
    return {
        "id": "msg_fake_anthropic",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        **stop,
        "usage": {**USAGE, **_server_tool_use(body)},
    }


def _server_tool_use(body: dict[str, Any]) -> dict[str, Any]:
    """One web search run when the request offers the tool (Anthropic counts them in the usage)."""
    tools = body.get("tools") or []
    offered = any(isinstance(t, dict) and str(t.get("type", "")).startswith("web_search_") for t in tools)
    return {"server_tool_use": {"web_search_requests": 1}} if offered else {}


def _tool_result(body: dict[str, Any]) -> str | None:
    """The text of the last message's ``tool_result`` block for TOOL_ID, if it has one."""
    last = body.get("messages", [{}])[-1].get("content")
    for block in last if isinstance(last, list) else ():
        if block.get("type") == "tool_result" and block.get("tool_use_id") == TOOL_ID:
            content = block.get("content")
            return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    return None


def _stop(body: dict[str, Any]) -> dict[str, Any]:
    """As if the answer had stopped on the request's first stop sequence, when it gives one."""
    sequences = body.get("stop_sequences")
    if isinstance(sequences, list) and sequences:
        return {"stop_reason": "stop_sequence", "stop_sequence": sequences[0]}
    return {"stop_reason": "end_turn", "stop_sequence": None}


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    """One content block as Anthropic streams it: start (empty), deltas, stop."""
    kind = block["type"]
    start = {"type": kind, "text": ""} if kind == "text" else {"type": kind, "thinking": "", "signature": ""}
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        deltas = [{"type": "text_delta", "text": block["text"]}]
    elif kind == "thinking":
        deltas = [
            {"type": "thinking_delta", "thinking": block["thinking"]},
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    elif kind == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        arguments = json.dumps(block["input"])
        cut = len(arguments) // 2
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ("", arguments[:cut], arguments[cut:])]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def _events(body: dict[str, Any]) -> list[dict[str, Any]]:
    message = _message(body)
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**USAGE, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    model = body.get("model")
    if model == ERROR_FIRST_MODEL:
        return [*events, OVERLOADED]
    if model == ERROR_MIDSTREAM_MODEL:
        return [*events, *_block_events(0, {"type": "text", "text": PARTIAL})[:2], API_ERROR]
    for index, block in enumerate(message["content"]):
        events.extend(_block_events(index, block))
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    usage = {"output_tokens": USAGE["output_tokens"], **_server_tool_use(body)}
    events.append({"type": "message_delta", "delta": stop, "usage": usage})
    events.append({"type": "message_stop"})
    return events


async def _stream(send: Send, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for data in _events(body):
        frame = f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _last_text(body: dict[str, Any]) -> str | None:
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    return content if isinstance(content, str) else None
