"""A small SSE reader for tests: parses events as they arrive and stamps each with its arrival time."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    at: float
    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


@dataclass
class SSEResult:
    status: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)

    @property
    def data_events(self) -> list[Event]:
        return [e for e in self.events if e.data is not None]

    @property
    def comments(self) -> list[Event]:
        return [e for e in self.events if e.comment is not None]

    def error_in_band(self) -> dict[str, Any]:
        """The error body of a stream that started (200) and ended with an ``event: error``, no [DONE]."""
        assert self.status == 200
        last = self.data_events[-1]
        assert last.event == "error"
        assert all(e.data != "[DONE]" for e in self.data_events)
        error: dict[str, Any] = last.json()["error"]
        return error

    def content(self) -> str:
        text = ""
        for e in self.data_events:
            if e.event is None and e.data != "[DONE]":
                for choice in e.json().get("choices", []):
                    text += choice.get("delta", {}).get("content") or ""
        return text


async def read_events(response: httpx.Response) -> list[Event]:
    events: list[Event] = []
    current: Event | None = None
    async for line in response.aiter_lines():
        now = time.monotonic()
        if line == "":
            if current is not None:
                events.append(current)
            current = None
            continue
        if line.startswith(":"):
            # A comment is not part of an event (the heartbeat is a lone comment line): kept apart.
            events.append(Event(at=now, comment=line[1:].strip()))
            continue
        current = current or Event(at=now)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            current.data = value if current.data is None else current.data + "\n" + value
        elif name == "id":
            current.id = value
        elif name == "event":
            current.event = value
    if current is not None:
        events.append(current)
    return events


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> SSEResult:
    headers = {"Accept": "text/event-stream", **kwargs.pop("headers", {})}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers, **kwargs) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aread()
            return SSEResult(response.status_code, response.headers, [Event(at=time.monotonic(), data=response.text)])
        return SSEResult(response.status_code, response.headers, await read_events(response))


def chat_body(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def post_raw(port: int, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A chat stream asked for over a raw socket on 127.0.0.1: the body is then read as the gateway
    wrote it (chunked framing included), or not read at all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Accept: text/event-stream\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    return reader, writer


async def read_to_done(reader: asyncio.StreamReader, received: bytes) -> bytes:
    """``received`` and the rest of the raw stream up to its ``[DONE]``; fails if the connection ends first."""
    while b"data: [DONE]" not in received[-200:]:
        data = await reader.read(1 << 20)
        assert data, f"the stream ended without [DONE]: {received[received.rfind(b'event: error') :][:600]!r}"
        received += data
    return received
