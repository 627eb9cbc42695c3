"""In-process micro-benchmarks quoted in the issues' closing notes.

    .venv/bin/python -m loadtests.bench_micro

- cache key: SHA-256 over a canonical msgspec encoding vs a JSON-dump key (the origin's approach)
- metrics: the recording cost of one stream and one HTTP request, with and without instruments
- push path: one provider read of one chunk through a pushed relayed stream (split and read,
  numbered and logged in a memory resume log, framed as SSE), up to the client connection's write
  (a stand-in that counts bytes): the Python every chunk of every relayed SSE stream costs
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
import statistics
import time
from collections.abc import Callable

from app.api.chat.sse import SseWriter
from app.cache.chat_cache import cache_key
from app.config.settings import DeploymentSettings
from app.core.push import PushRun
from app.core.stream import ChatStream
from app.domain.chat_request import parse_chat_body
from app.domain.chunks import Usage
from app.domain.events import Deadlines
from app.observability.metrics import Metrics
from app.providers.relay import Relay, RelayStream
from app.resume.memory import MemoryResumeStore


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


async def _agen():  # type: ignore[no-untyped-def]
    if False:
        yield None


def _aiter():  # type: ignore[no-untyped-def]
    return _agen()


if __name__ == "__main__":
    bench_keys()
    bench_metrics()
    bench_push()
