"""A fake OpenAI-compatible provider served over real HTTP for integration tests.

LiteLLM must really open a socket and parse real SSE, otherwise tests cannot
catch streaming, timeout or disconnect bugs. So this is a raw ASGI 3 app run by
uvicorn in a daemon thread with its own event loop; tests talk to it through
`base_url` and inspect what it saw through thread-safe `RequestRecord`s.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Header = tuple[bytes, bytes]

KINDS = frozenset({"stream", "error", "hang", "hang_after_headers", "drop", "stream_error"})
DEFAULT_CONTENT = ["Hello", ",", " world", "!", " This", " is", " the", " fake", " provider", "."]
TOOL_NAME = "get_weather"
# Split so that clients must concatenate argument deltas to get valid JSON.
TOOL_ARG_PIECES = ['{"city": ', '"Paris"', "}"]


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1 (racy by nature; FakeProvider doesn't use it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Behaviour:
    kind: str = "stream"
    content: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENT))
    first_delay_s: float = 0.0
    gap_s: float = 0.01
    # Counted in token chunks (reasoning, content and tool-argument deltas alike).
    silence_after: int | None = None
    silence_s: float = 0.0
    drop_after: int = 2
    status: int = 200
    error_type: str = "server_error"
    error_code: str | None = None
    error_message: str = "The fake provider returned an error."
    retry_after: str | None = None
    tool_calls: bool = False
    reasoning: list[str] | None = None
    # None means (7, len(content)); computed lazily so dataclasses.replace() stays correct.
    usage: tuple[int, int] | None = None
    # Errors repeat the request's credentials back, as some providers and proxies do.
    echo_credentials: bool = False
    # The error body is plain text, not JSON.
    plain_error: bool = False
    # The finish chunk, the usage chunk and [DONE] go out in one write, as providers often send them.
    tail_together: bool = False
    # With tail_together: [DONE] only this long after the finish and usage chunks (0: with them).
    done_delay_s: float = 0.0
    # The usage chunk this long after the finish chunk, on its own (real providers send it later).
    usage_delay_s: float = 0.0
    # Never sends usage, whatever the request asks (some providers and proxies do not).
    no_usage: bool = False
    # Tool calls to make instead of the get_weather one: (name, arguments JSON), one item each.
    calls: list[tuple[str, str]] | None = None
    # The finish names the request's first stop sequence as its cause (``stop_reason`` on the choice,
    # as vLLM and servers like it do), as if the answer had stopped on it.
    names_stop: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown behaviour kind {self.kind!r}; expected one of {sorted(KINDS)}")

    def usage_counts(self) -> tuple[int, int]:
        return self.usage if self.usage is not None else (7, len(self.content))


def _stop_reason(b: Behaviour, record: RequestRecord) -> dict[str, Any]:
    """The finish's ``stop_reason`` member, for a behaviour that names the stop sequence it stopped on."""
    stop = record.body.get("stop")
    first = stop if isinstance(stop, str) else stop[0] if isinstance(stop, list) and stop else None
    return {"stop_reason": first} if b.names_stop and first is not None else {}


def _error(status: int, type_: str, code: str | None, message: str, **kw: Any) -> Behaviour:
    return Behaviour(kind="error", status=status, error_type=type_, error_code=code, error_message=message, **kw)


def builtin_behaviours() -> dict[str, Behaviour]:
    return {
        "normal": Behaviour(),
        "slow_first": Behaviour(first_delay_s=0.5),
        "silent": Behaviour(silence_after=2, silence_s=1.0),
        "drop": Behaviour(kind="drop"),
        "hang": Behaviour(kind="hang"),
        "hang_after_headers": Behaviour(kind="hang_after_headers"),
        "tail_together": Behaviour(tail_together=True),
        "late_done": Behaviour(tail_together=True, done_delay_s=0.5),
        "script": Behaviour(content=["<script>", "alert(1)", "</script>", " done"]),
        "tools": Behaviour(tool_calls=True, content=[]),
        "reasoning": Behaviour(reasoning=["Let", " me", " think", "."], content=["The", " answer", "."]),
        "stops_on_sequence": Behaviour(content=["Counting", ": 1,", " 2,", " 3"], names_stop=True),
        "context_length": _error(
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
        ),
        "bad_request": _error(400, "invalid_request_error", "invalid_value", "Invalid value for 'temperature'."),
        "unauthorized": _error(
            401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-fake. (fake provider)"
        ),
        "not_found": _error(404, "invalid_request_error", "model_not_found", "The model `x` does not exist"),
        "rate_limited": _error(429, "requests", "rate_limit_exceeded", "Rate limit reached.", retry_after="7"),
        "server_error": _error(500, "server_error", None, "The server had an error while processing your request."),
        "overloaded": _error(503, "server_error", None, "The engine is currently overloaded."),
    }


@dataclass
class RequestRecord:
    """What one chat-completion request saw. Times are time.monotonic()."""

    index: int  # 0-based position in `FakeProvider.requests` since the last reset
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float
    stream: bool = False
    status: int | None = None
    first_byte_at: float | None = None  # response headers sent
    chunk_times: list[float] = field(default_factory=list)  # every non-empty body message, [DONE] included
    completed_at: float | None = None  # the whole response was handed to the transport
    disconnected_at: float | None = None  # the client went away before completion
    aborted_at: float | None = None  # we cut the connection on purpose ("drop", or stop())

    @property
    def ended(self) -> bool:
        return any(t is not None for t in (self.completed_at, self.disconnected_at, self.aborted_at))


class LeftRunning(AssertionError):
    """``reset`` found calls that had not ended: a test left an upstream call open."""


class _DeliberateAbort(Exception):
    """Raised out of the app so uvicorn closes the transport mid-response."""


class _HideDeliberateAborts(logging.Filter):
    # uvicorn logs every app exception with a traceback; ours are intentional noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DeliberateAbort))


_ABORT_FILTER = _HideDeliberateAborts()
#: How long the provider must have seen no new request before ``reset`` forgets the old ones.
QUIET_S = 0.05
_ids = itertools.count(1)


class FakeProvider:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._records: list[RequestRecord] = []
        self._behaviours = builtin_behaviours()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[asyncio.Task[None]] = set()  # touched only on the server loop
        self._thread_error: BaseException | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 5.0) -> FakeProvider:
        if self._thread is not None:
            raise RuntimeError("FakeProvider already started")
        # Bind and listen before the thread starts: the port is known and
        # connectable immediately, with no free_port() race.
        sock = socket.socket(
            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )  # proto set: asyncio then sets TCP_NODELAY on accepted sockets
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        logging.getLogger("uvicorn.error").addFilter(_ABORT_FILTER)
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            log_level="warning",
            log_config=None,  # None: don't let uvicorn dictConfig the test process
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"fake-provider-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._thread_error is not None or not self._thread.is_alive():
                raise RuntimeError("fake provider failed to start") from self._thread_error
            if time.monotonic() > deadline:
                raise TimeoutError("fake provider did not start in time")
            time.sleep(0.005)
        return self

    def _run(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()
            self._thread_error = exc

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None or self._server is None:
            return
        # Hanging handlers would otherwise keep uvicorn's graceful shutdown waiting.
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._abort_inflight)
            except RuntimeError:  # loop closed in between
                pass
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def _abort_inflight(self) -> None:
        for task in list(self._inflight):
            task.cancel()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- configuration and inspection ------------------------------------

    def set_behaviour(self, model: str, behaviour: Behaviour) -> None:
        with self._cond:
            self._behaviours[model] = behaviour

    def behaviour_for(self, model: str) -> Behaviour:
        with self._cond:
            return self._behaviours.get(model) or self._behaviours["normal"]

    @property
    def requests(self) -> list[RequestRecord]:
        with self._cond:
            return list(self._records)

    def calls(self, model: str | None = None) -> int:
        with self._cond:
            return sum(1 for r in self._records if model is None or r.model == model)

    def reset(self, settle_s: float = 2.0) -> None:
        """Forget every request, once the earlier ones have ended and none came in the last 50 ms
        (both bounded by ``settle_s``): the provider is shared by the session, and a request the
        gateway was still making for the previous test must not count as the next test's.

        Calls still running after ``settle_s`` are forgotten too, then reported (``LeftRunning``):
        a call that the gateway never closed is a leak, never to be hidden from the next test."""
        deadline = time.monotonic() + settle_s
        with self._cond:
            while time.monotonic() < deadline:
                records = self._records
                quiet_for = time.monotonic() - records[-1].received_at if records else QUIET_S
                if all(r.ended for r in records) and quiet_for >= QUIET_S:
                    break
                self._cond.wait(max(0.005, QUIET_S - quiet_for))
            running = [r for r in self._records if not r.ended]
            self._records.clear()
        if running:
            now = time.monotonic()
            calls = ", ".join(
                f"#{r.index + 1} {r.model!r} (started {now - r.received_at:.1f} s ago, "
                f"{len(r.chunk_times)} body messages sent)"
                for r in running
            )
            raise LeftRunning(f"{len(running)} provider call(s) still running {settle_s} s into reset(): {calls}")

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    async def _await(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        # Polling keeps this loop-agnostic: the server runs on a different loop/thread.
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if predicate():
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.005)

    def wait_for_request(self, n: int = 1, timeout: float = 5.0) -> RequestRecord:
        self._wait(lambda: len(self._records) >= n, timeout, f"request #{n}")
        with self._cond:
            return self._records[n - 1]

    async def await_request(self, n: int = 1, timeout: float = 5.0) -> RequestRecord:
        await self._await(lambda: len(self._records) >= n, timeout, f"request #{n}")
        with self._cond:
            return self._records[n - 1]

    def wait_for_model(self, model: str, timeout: float = 5.0) -> RequestRecord:
        """The first request for ``model`` since the last reset: a test that must not mistake a late
        request of an earlier test (the provider is shared by the session) for its own."""
        self._wait(lambda: any(r.model == model for r in self._records), timeout, f"a request for {model!r}")
        with self._cond:
            return next(r for r in self._records if r.model == model)

    def wait_for_disconnect(self, record: RequestRecord, timeout: float = 5.0) -> float:
        try:
            what = f"disconnect of request #{record.index + 1}"
            self._wait(lambda: record.disconnected_at is not None, timeout, what)
        except TimeoutError as exc:  # what the request had done by then tells a hang from an early end
            raise TimeoutError(
                f"{exc} ({record.model}: completed_at={record.completed_at}, aborted_at={record.aborted_at}, "
                f"{len(record.chunk_times)} body messages sent)"
            ) from None
        assert record.disconnected_at is not None
        return record.disconnected_at

    async def await_disconnect(self, record: RequestRecord, timeout: float = 5.0) -> float:
        await self._await(lambda: record.disconnected_at is not None, timeout, "client disconnect")
        assert record.disconnected_at is not None
        return record.disconnected_at

    def wait_for_end(self, record: RequestRecord, timeout: float = 5.0) -> RequestRecord:
        self._wait(lambda: record.ended, timeout, f"end of request #{record.index + 1}")
        return record

    async def await_end(self, record: RequestRecord, timeout: float = 5.0) -> RequestRecord:
        await self._await(lambda: record.ended, timeout, "end of request")
        return record

    def _mark(self, record: RequestRecord, **fields: Any) -> None:
        with self._cond:
            for name, value in fields.items():
                setattr(record, name, value)
            self._cond.notify_all()

    # ---- ASGI ------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path, method = scope["path"].rstrip("/"), scope["method"]
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            await self._chat(scope, bytes(raw), receive, send)
        elif method == "POST" and path in ("/v1/embeddings", "/embeddings"):
            await _embeddings(self, scope, bytes(raw), send)
        elif method == "GET" and path in ("/v1/models", "/models"):
            with self._cond:
                names = sorted(self._behaviours)
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake-provider"} for n in names]
            await _send_json(send, 200, {"object": "list", "data": data})
        else:
            error = _error_body(f"Unknown route {method} {scope['path']}", "invalid_request_error", "unknown_url")
            await _send_json(send, 404, error)

    async def _chat(self, scope: Scope, raw: bytes, receive: Receive, send: Send) -> None:
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            await _send_json(send, 400, _error_body(f"Invalid JSON body: {exc}", "invalid_request_error", None))
            return
        model = str(body.get("model", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self._cond:
            stream = body.get("stream") is True
            record = RequestRecord(len(self._records), model, body, headers, time.monotonic(), stream=stream)
            self._records.append(record)
            self._cond.notify_all()

        # Run the response next to a receive() watcher so a client hang-up is
        # seen at once in every phase (before headers, mid-stream, in silence).
        behaviour = scripted_reply(model, body) or self.behaviour_for(model)
        work = asyncio.create_task(self._respond(record, behaviour, send))
        watcher = asyncio.create_task(self._watch_disconnect(receive, record))
        self._inflight.add(work)
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._inflight.discard(work)
            work.cancel()
            watcher.cancel()
            await asyncio.gather(work, watcher, return_exceptions=True)
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]  # "drop": uvicorn now closes the transport
        if work.cancelled() and record.disconnected_at is None:
            self._mark(record, aborted_at=time.monotonic())
            raise _DeliberateAbort("fake provider stopped")

    async def _watch_disconnect(self, receive: Receive, record: RequestRecord) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        # uvicorn also reports disconnect once the response is complete; that's not a hang-up.
        if record.completed_at is None:
            self._mark(record, disconnected_at=time.monotonic())

    async def _respond(self, record: RequestRecord, b: Behaviour, send: Send) -> None:
        n = next(_ids)
        if b.kind == "hang":
            await asyncio.Event().wait()
        if b.kind == "error":
            await asyncio.sleep(b.first_delay_s)
            extra = [(b"retry-after", b.retry_after.encode())] if b.retry_after is not None else []
            message = _echoed(b, record)
            error = _error_body(message, b.error_type, b.error_code)
            payload = message.encode() if b.plain_error else _json_bytes(error)
            await self._send_recorded(record, send, b.status, payload, extra)
            return
        if not record.stream:
            await self._respond_json(record, b, send, n)
            return

        await self._start(record, send, 200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")])
        if b.kind == "hang_after_headers":
            await asyncio.Event().wait()
        await asyncio.sleep(b.first_delay_s)
        base = {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": record.model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            if finish is not None:
                choice.update(_stop_reason(b, record))
            return _sse({**base, "choices": [choice]})

        for i, delta in enumerate(_token_deltas(b, n)):
            if i == 0:
                delta = {"role": "assistant", **delta}
            elif b.silence_after is not None and i == b.silence_after:
                await asyncio.sleep(b.silence_s)
            else:
                await asyncio.sleep(b.gap_s)
            if b.kind == "drop" and i == b.drop_after:
                self._abort(record)
            if b.kind == "stream_error" and i == b.drop_after:
                error = _error_body(_echoed(b, record), b.error_type, b.error_code)
                await self._body(record, send, _sse(error))
                await self._body(record, send, b"", more=False)
                return
            await self._body(record, send, chunk(delta))
        if b.kind == "drop":  # fewer tokens than drop_after: still never finish cleanly
            self._abort(record)
        tail = [chunk({}, "tool_calls" if b.tool_calls or b.calls else "stop")]
        if b.usage_delay_s:
            await self._body(record, send, tail.pop())
            await asyncio.sleep(b.usage_delay_s)
        if (record.body.get("stream_options") or {}).get("include_usage") is True and not b.no_usage:
            tail.append(_sse({**base, "choices": [], "usage": _usage(b)}))
        tail.append(b"data: [DONE]\n\n")
        if b.tail_together and b.done_delay_s:
            await self._body(record, send, b"".join(tail[:-1]))
            await asyncio.sleep(b.done_delay_s)
            await self._body(record, send, tail[-1], more=False)
            return
        if b.tail_together:
            await self._body(record, send, b"".join(tail), more=False)
            return
        for i, part in enumerate(tail):
            await self._body(record, send, part, more=i < len(tail) - 1)

    async def _respond_json(self, record: RequestRecord, b: Behaviour, send: Send, n: int) -> None:
        await asyncio.sleep(b.first_delay_s)
        content = "".join(b.content) if b.content or not b.tool_calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if b.reasoning:
            message["reasoning_content"] = "".join(b.reasoning)
        if b.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_fake_{n}",
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": "".join(TOOL_ARG_PIECES)},
                }
            ]
        if b.calls:
            message["tool_calls"] = [
                {"id": f"call_fake_{n}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(b.calls)
            ]
        payload = _json_bytes(
            {
                "id": f"chatcmpl-fake-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": record.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if b.tool_calls or b.calls else "stop",
                        **_stop_reason(b, record),
                    }
                ],
            }
            | ({} if b.no_usage else {"usage": _usage(b)})
        )
        if b.kind == "hang_after_headers":
            await self._start(record, send, 200, [(b"content-type", b"application/json")])
            await asyncio.Event().wait()
        if b.kind == "drop":  # chunked, half a JSON document, then a cut
            await self._start(record, send, 200, [(b"content-type", b"application/json")])
            await self._body(record, send, payload[: len(payload) // 2])
            self._abort(record)
        await self._send_recorded(record, send, 200, payload, [])

    def _abort(self, record: RequestRecord) -> None:
        self._mark(record, aborted_at=time.monotonic())
        raise _DeliberateAbort("fake provider dropped the connection on purpose")

    async def _start(self, record: RequestRecord, send: Send, status: int, headers: list[Header]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self._mark(record, status=status, first_byte_at=time.monotonic())

    async def _body(self, record: RequestRecord, send: Send, data: bytes, more: bool = True) -> None:
        # One ASGI message per event so each is written (and flushed) on its own.
        await send({"type": "http.response.body", "body": data, "more_body": more})
        now = time.monotonic()
        with self._cond:
            record.chunk_times.append(now)
            if not more:
                record.completed_at = now
            self._cond.notify_all()

    async def _send_recorded(
        self, record: RequestRecord, send: Send, status: int, payload: bytes, extra: list[Header]
    ) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
        await self._start(record, send, status, headers)
        await self._body(record, send, payload, more=False)


def _token_deltas(b: Behaviour, n: int) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [{"reasoning_content": t} for t in b.reasoning or []]
    deltas += [{"content": t} for t in b.content]
    if b.tool_calls:
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": f"call_fake_{n}",
                        "type": "function",
                        "function": {"name": TOOL_NAME, "arguments": ""},
                    }
                ]
            }
        )
        deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in TOOL_ARG_PIECES]
    for i, (name, args) in enumerate(b.calls or []):
        head = {"index": i, "id": f"call_fake_{n}_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        half = len(args) // 2
        deltas += [{"tool_calls": [{"index": i, "function": {"arguments": p}}]} for p in (args[:half], args[half:])]
    return deltas or [{"content": ""}]


def _usage(b: Behaviour) -> dict[str, int]:
    prompt, completion = b.usage_counts()
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _echoed(b: Behaviour, record: RequestRecord) -> str:
    if not b.echo_credentials:
        return b.error_message
    auth = record.headers.get("authorization", "")
    bare = auth.partition(" ")[2]
    return (
        f"{b.error_message} Incorrect API key provided: {bare}. "
        f"Request headers: authorization: {auth}; x-api-key={record.headers.get('x-api-key', bare)}"
    )


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(obj: Any) -> bytes:
    return b"data: " + _json_bytes(obj) + b"\n\n"


async def _send_json(send: Send, status: int, obj: Any) -> None:
    payload = _json_bytes(obj)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


# -- scripted agents: answers that depend on the conversation so far ------------------------------

#: Models whose answer is scripted from the request (agents and coding CLIs need several turns).
SCRIPTED_MODELS = ("script_two_tools", "script_exec")
EXEC_MARKER = "gateway-exec-ok-4242"


def scripted_reply(model: str, body: dict[str, Any]) -> Behaviour | None:
    """The next turn of a scripted agent run, from the tool results the request already carries.

    ``script_two_tools``: asks for ``get_weather``, then ``get_time``, then answers with both results.
    ``script_exec``: asks for ``exec_command`` running ``echo`` (the Codex CLI's shell tool), then
    answers with the command's output.
    """
    if model not in SCRIPTED_MODELS:
        return None
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    results = [str(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
    if model == "script_two_tools":
        if not results:
            return Behaviour(content=[], calls=[("get_weather", '{"city": "Paris"}')])
        if len(results) == 1:
            return Behaviour(content=[], calls=[("get_time", '{"city": "Paris"}')])
        return Behaviour(content=["Weather: ", results[0], "; time: ", results[1], "."])
    if not results:
        return Behaviour(content=[], calls=[("exec_command", json.dumps({"cmd": f"echo {EXEC_MARKER}"}))])
    return Behaviour(content=["The command printed: ", results[-1][-400:]])


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.helpers.fake_provider --port N``: the fake provider in the foreground, for local trials.

    Every built-in behaviour is a model name (``normal``, ``slow_first``, ``rate_limited``, ...; any other
    name answers like ``normal``). It keeps a record of every request in memory, so it is for trying
    things, not for long runs; Ctrl-C stops it.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m tests.helpers.fake_provider",
        description="A fake OpenAI-compatible provider on http://HOST:PORT/v1: each model name is a behaviour.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9100, help="TCP port (default 9100; 0 picks a free one)")
    args = parser.parse_args(argv)
    provider = FakeProvider()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sock.listen(128)
    port = sock.getsockname()[1]
    logging.getLogger("uvicorn.error").addFilter(_ABORT_FILTER)
    config = uvicorn.Config(
        provider._app, interface="asgi3", http="h11", ws="none", lifespan="off", log_level="warning", access_log=False
    )
    print(f"fake provider on http://{args.host}:{port}/v1", file=sys.stderr, flush=True)
    print(f"  models   {', '.join(sorted(builtin_behaviours()))} (any other name: normal)", file=sys.stderr)
    print(
        f'  gateway  litellm_model = "openai/<model>", api_base = "http://{args.host}:{port}/v1"',
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


# ---- embeddings (kept apart from the chat fake above) ----------------------------------------------


#: An embeddings model whose answer's vectors are not arrays of numbers (a broken provider).
EMBED_NOT_NUMBERS = "embed_not_numbers"
NOT_NUMBERS = ["0.1", {"x": 1}]
#: Broken providers of other kinds: base64 of 6 bytes (not whole float32s), a value beyond float32's
#: range, and a negative token count.
EMBED_BROKEN = {
    "embed_short_base64": {"embedding": "AAAAAAAA"},
    "embed_huge": {"embedding": [1e39, 0.5]},
    "embed_negative": {"usage": {"prompt_tokens": -1_000_000, "total_tokens": -1_000_000}},
}


def fake_vector(item: Any, dimensions: int) -> list[float]:
    """A deterministic vector for one input: tests can recompute what the provider answered."""
    seed = sum(ord(c) for c in item) if isinstance(item, str) else sum(item)
    return [round(((seed * (i + 3)) % 97) / 97.0 - 0.5, 6) for i in range(dimensions)]


def _float32_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def _embeddings(provider: FakeProvider, scope: Scope, raw: bytes, send: Send) -> None:
    """``POST /v1/embeddings``: floats per input (``dimensions``, default 8), usage = 3 tokens a
    string or the token count; an error behaviour of the model's name answers its error."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        await _send_json(send, 400, _error_body(f"Invalid JSON body: {exc}", "invalid_request_error", None))
        return
    model = str(body.get("model", ""))
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    with provider._cond:
        record = RequestRecord(len(provider._records), model, body, headers, time.monotonic())
        provider._records.append(record)
        provider._cond.notify_all()
    b = provider.behaviour_for(model)
    if b.kind == "error":
        extra = [(b"retry-after", b.retry_after.encode())] if b.retry_after is not None else []
        payload = _json_bytes(_error_body(b.error_message, b.error_type, b.error_code))
        await provider._send_recorded(record, send, b.status, payload, extra)
        return
    await asyncio.sleep(b.first_delay_s)
    value = body.get("input")
    items = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else list(value or [])
    dimensions = int(body.get("dimensions") or 8)
    data = [
        {"object": "embedding", "index": i, "embedding": NOT_NUMBERS if model == EMBED_NOT_NUMBERS else vector}
        for i, x in enumerate(items)
        for vector in [fake_vector(x, dimensions)]
    ]
    if body.get("encoding_format") == "base64" and model != EMBED_NOT_NUMBERS:  # as OpenAI answers it
        data = [{**item, "embedding": _float32_base64(item["embedding"])} for item in data]
    broken = EMBED_BROKEN.get(model, {})
    if "embedding" in broken:
        data = [{**item, "embedding": broken["embedding"]} for item in data]
    tokens = sum(len(x) if isinstance(x, list) else 3 for x in items)
    reply: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not b.no_usage:
        reply["usage"] = broken.get("usage", {"prompt_tokens": tokens, "total_tokens": tokens})
    await provider._send_recorded(record, send, 200, _json_bytes(reply), [])


if __name__ == "__main__":
    raise SystemExit(main())
