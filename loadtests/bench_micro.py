"""In-process micro-benchmarks quoted in the issues' closing notes.

    .venv/bin/python -m loadtests.bench_micro

- cache key: SHA-256 over a canonical msgspec encoding vs a JSON-dump key (the origin's approach)
- metrics: the recording cost of one stream and one HTTP request, with and without instruments
- push path: one provider read of one chunk through a pushed relayed stream (split and read,
  numbered and logged in a memory resume log, framed as SSE), up to the client connection's write
  (a stand-in that counts bytes): the Python every chunk of every relayed SSE stream costs
- JSON depth check: the nesting check every request body and WebSocket frame passes before it is
  decoded (``check_depth``), on an agent's body (a conversation and sixty tools with schemas, ~140 KB)
  and on 1 MB bodies built to make it work (sibling arrays, escapes, short strings, nests at the limit)
- protocol: one request through the server's HTTP/1.1 protocol (``guarded.py`` on uvicorn's
  httptools protocol) on a kept-alive connection, head and body in one read, 14 headers as the
  OpenAI SDK sends them, to a plain ASGI app answering an empty 200: what the server costs a request
  before and after the app
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

import uvloop

from app.api.chat.sse import SseWriter
from app.cache.chat_cache import cache_key
from app.config.settings import DeploymentSettings
from app.core.push import PushRun
from app.core.stream import ChatStream
from app.domain.chat_request import MAX_JSON_DEPTH, check_depth, parse_chat_body
from app.domain.chunks import Usage
from app.domain.events import Deadlines
from app.observability.metrics import Metrics
from app.providers.relay import Relay, RelayStream
from app.resume.memory import MemoryResumeStore
from app.transport.guarded import ConnectionLimits, GatewayConfig


def per_call_us(fn: Callable[[], object], n: int = 20000, repeat: int = 5) -> float:
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(best)


def bench_keys() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 10},
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences, please. " * 5},
            {"role": "assistant", "content": "Hamlet is a tragedy ... " * 20},
            {"role": "user", "content": "And Macbeth?"},
        ],
        "temperature": 0.2,
        "max_tokens": 300,
        "stream": True,
        "seed": 7,
    }
    dep = DeploymentSettings(name="gpt-4o-mini", litellm_model="openai/gpt-4o-mini")
    ours = per_call_us(lambda: cache_key(body, dep, "anonymous"))
    dump = per_call_us(lambda: "chat:" + json.dumps(body, sort_keys=True))
    print(f"cache key, SHA-256 over canonical msgspec: {ours:.2f} us/request")
    print(f"cache key, json.dumps(sort_keys=True) dump: {dump:.2f} us/request (key length {len(json.dumps(body))} B)")


def _nest(depth: int) -> object:
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k[": value}
    return value


def depth_check_bodies() -> dict[str, bytes]:
    props = {f"p{j}": {"type": "string", "description": "x" * 80, "enum": ["a", "b"]} for j in range(12)}
    schema = {"type": "object", "properties": props, "required": ["p0"]}
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "description": "d" * 300, "parameters": schema}}
        for i in range(60)
    ]
    agent = {"model": "m", "messages": [{"role": "user", "content": 'say "hi" \\ ' * 500}], "tools": tools}
    deep_enough = b'{"a": [' + b"[]," * 100 + b"[]], "
    return {
        "an agent's body": json.dumps(agent).encode(),
        "1 MB of sibling arrays": b"[" + b"[]," * 333_000 + b"[]]",
        "1 MB of escapes": deep_enough + b'"b": "' + b'\\\\\\"' * 250_000 + b'"}',
        "1 MB of short strings": deep_enough + b'"b": [' + b'"",' * 330_000 + b'""]}',
        "1 MB of nests at the limit": json.dumps([_nest(MAX_JSON_DEPTH - 1)] * 3_100).encode(),
    }


def bench_depth_check() -> None:
    for name, body in depth_check_bodies().items():
        took = per_call_us(partial(check_depth, body), n=3 if len(body) > 500_000 else 50)
        print(f"JSON depth check, {name} ({len(body) // 1000} KB): {took / 1000:.2f} ms")


async def _nothing() -> None:
    return None


def bench_metrics() -> None:
    metrics = Metrics()
    deadlines = Deadlines(60, 60, 15)

    def one_stream(observer: Metrics | None) -> None:
        stream = ChatStream("s", "gpt-4o-mini", "sse", _aiter(), deadlines, observer=observer)
        stream.metric_attrs = {}
        if observer is not None:
            observer.stream_opened(stream)
        stream.first_byte_at = stream.first_token_at = time.perf_counter()
        stream.chunks, stream.usage, stream.outcome, stream.ended_at = (
            20,
            Usage(12, 20),
            "completed",
            time.perf_counter(),
        )
        if observer is not None:
            observer.stream_first_byte(stream)
            observer.stream_first_token(stream)
            observer.stream_closed(stream)

    scope = {"type": "http", "method": "POST", "path_template": "/v1/chat/completions"}
    with_stream = per_call_us(lambda: one_stream(metrics), n=5000)
    without_stream = per_call_us(lambda: one_stream(None), n=5000)
    http = per_call_us(lambda: metrics.http_request(scope, 200, 0.01))
    print(
        f"metrics per stream (open, first byte, first token, close): {with_stream - without_stream:.2f} us "
        f"({with_stream:.2f} with instruments vs {without_stream:.2f} without)"
    )
    print(f"metrics per HTTP request (duration histogram): {http:.2f} us")
    metrics.shutdown()


class _Connection:
    """Stands in for the client's connection (``DirectBody``) and the provider's response."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, body: bytes) -> bool:
        self.written += len(b"%x\r\n%b\r\n" % (len(body), body))  # DirectBody's chunked framing
        return True

    async def writable(self) -> None:
        return None

    def deliver(self, sink: object, full: bool) -> None:
        return None

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


#: One read of the loadtests upstream's stream: one content chunk, as it sends them.
_READ = (
    b'data: {"id":"chatcmpl-lt-fast","object":"chat.completion.chunk","created":1700000000,"model":"fast",'
    b'"choices":[{"index":0,"delta":{"content":" w5"},"finish_reason":null}]}\n\n'
)


async def push_path(reads: int, streams: int) -> tuple[float, int]:
    """Microseconds per read of ``_READ`` through ``streams`` pushed streams, and the bytes written."""
    relay = Relay({})
    body = parse_chat_body(b'{"model":"fast","messages":[{"role":"user","content":"hi"}],"stream":true}')
    store = MemoryResumeStore(60, 100_000, 1 << 40)
    elapsed, written = 0.0, 0
    for n in range(streams):
        connection = _Connection()
        source = RelayStream(relay, body, "fast")
        source._response = connection  # type: ignore[assignment]  # an open response, as after the first chunk
        stream = ChatStream(f"{n:032x}", "fast", "sse", _aiter(), Deadlines(900, 900, 15))
        stream.log = store.begin(stream.id, "bench")
        stream.start()
        writer = SseWriter(stream, _unused_send, connection)  # type: ignore[arg-type]
        source.push(PushRun(stream, source, writer))
        started = time.perf_counter()
        for _ in range(reads):
            source.body(_READ)
        elapsed += time.perf_counter() - started
        writer.stop()
        stream.last(None)
        written += connection.written
    return elapsed / (reads * streams) * 1e6, written


async def _unused_send(message: object) -> None:
    raise AssertionError("a pushed chunk goes through the direct writer, not send")


def bench_push() -> None:
    runs = [asyncio.run(push_path(2000, 10))[0] for _ in range(7)]
    median, best = statistics.median(runs), min(runs)
    print(f"push path per provider read of one chunk: {median:.2f} us (median of 7, min {best:.2f})")


_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\nuser-agent: OpenAI/Python 1.99.0\r\n"
    b"accept-encoding: gzip, deflate\r\naccept: application/json\r\nconnection: keep-alive\r\n"
    b"content-type: application/json\r\nauthorization: Bearer sk-0000000000000000\r\nx-stainless-lang: python\r\n"
    b"x-stainless-os: Linux\r\nx-stainless-arch: x64\r\nx-stainless-runtime: CPython\r\n"
    b"x-stainless-retry-count: 0\r\ncontent-length: 2\r\n\r\n{}"
)


class _Socket:
    """The connection's transport, counting writes."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def close(self) -> None:
        return None


class _ServerState:
    total_requests = 0

    def __init__(self) -> None:
        self.connections: set[object] = set()
        self.tasks: set[object] = set()
        self.default_headers: list[tuple[bytes, bytes]] = []


async def _empty_200(scope: object, receive: Callable[[], object], send: Callable[[object], object]) -> None:
    await receive()  # type: ignore[misc]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})  # type: ignore[misc]
    await send({"type": "http.response.body", "body": b""})  # type: ignore[misc]


async def protocol_request(requests: int) -> tuple[float, int]:
    """Microseconds per request through the server's protocol, and the responses written."""
    config = GatewayConfig(
        _empty_200, connection_limits=ConnectionLimits(), proxy_headers=False, access_log=False, lifespan="off"
    )
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=_ServerState(), app_state={})  # type: ignore[call-arg]
    socket = _Socket()
    protocol.connection_made(socket)  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(_REQUEST)
        await asyncio.sleep(0)  # the app's task runs and answers
        await asyncio.sleep(0)  # the held head goes out with the body (head_write.py)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / requests * 1e6, socket.writes


def bench_protocol() -> None:
    runs = [uvloop.run(protocol_request(20000))[0] for _ in range(5)]
    print(
        f"protocol per request (kept alive, 14 headers, an empty 200): {statistics.median(runs):.2f} us (median of 5)"
    )


async def _agen():  # type: ignore[no-untyped-def]
    if False:
        yield None


def _aiter():  # type: ignore[no-untyped-def]
    return _agen()


if __name__ == "__main__":
    bench_keys()
    bench_metrics()
    bench_push()
    bench_depth_check()
    bench_protocol()
