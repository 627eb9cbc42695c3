"""JSON answers compressed for clients that ask for gzip, a large one off the event loop: the loop
keeps serving every other stream while a multi-megabyte embeddings answer is compressed."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
from typing import Any

from app.server.middleware import OFF_LOOP_BYTES, JsonCompressionMiddleware


def _answer(size: int) -> bytes:
    # An embeddings answer: random floats, which compress slowly (tens of ms a MB at level 5).
    rng = random.Random(7)
    row = json.dumps({"object": "embedding", "index": 0, "embedding": [rng.uniform(-1, 1) for _ in range(512)]})
    rows = [
        {"object": "embedding", "index": i, "embedding": [rng.uniform(-1, 1) for _ in range(512)]}
        for i in range(size // len(row) + 1)
    ]
    return json.dumps({"object": "list", "data": rows}).encode()


async def _serve(body: bytes) -> tuple[list[dict[str, Any]], float, float]:
    """The middleware's messages for ``body``, how long the call took and the longest the loop was held."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"accept-encoding", b"gzip")]}
    longest, done = 0.0, asyncio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await JsonCompressionMiddleware(app)(scope, None, send)  # type: ignore[arg-type]
    took = time.perf_counter() - started
    done.set()
    await asyncio.wait_for(ticking, 5)
    return sent, took, longest


async def test_a_large_answer_is_compressed_while_the_loop_runs() -> None:
    body = _answer(4 * 1024 * 1024)
    sent, took, longest = await _serve(body)
    start, message = sent
    assert (b"content-encoding", b"gzip") in start["headers"]
    assert gzip.decompress(message["body"]) == body
    # Compressed on the loop, the loop is held for the whole call; in a thread, for a sliver of it.
    assert longest < took / 3, f"the loop was held {longest * 1000:.0f} ms of {took * 1000:.0f} ms"


async def test_a_small_answer_is_compressed_as_before() -> None:
    body = _answer(OFF_LOOP_BYTES // 4)
    sent, _, _ = await _serve(body)
    start, message = sent
    assert (b"content-encoding", b"gzip") in start["headers"]
    assert gzip.decompress(message["body"]) == body
