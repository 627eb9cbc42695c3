"""A fast fake OpenAI-compatible upstream for load tests.

``python -m loadtests.upstream --port 0`` prints ``READY <port>`` once it listens on 127.0.0.1.

It is a raw ``asyncio.Protocol`` HTTP/1.1 server on uvloop (keep-alive, ``Content-Length``
request bodies, chunked transfer encoding for SSE) so that it is never the bottleneck:

- every byte it sends is encoded once per model name and reused (``Payload``);
- a request costs one ``json.loads`` of its (small) body and nothing else per chunk.

Two ways to time the chunks (``--timers``):

- ``stream`` (the default): every stream runs on its own timer (``loop.call_at`` per chunk), as
  separate provider connections do, and its schedule starts at a phase of its own: the first chunk
  comes ``--first-ms`` plus a phase in [0, ``--gap-ms``) after the request, then one every
  ``--gap-ms``. The phases are a golden-ratio sequence (``PhaseSequence``): spread evenly over the
  gap in an order no arrival pattern lines up with, and the same set in every run of the same
  number of requests (``/stats?reset=1`` restarts it), so the TTFB percentiles of a direct run and
  a gateway run stay comparable. Without the phase, users started at evenly spaced moments (the
  matrix's ramp: 32 users over 240 ms = every 7.5 ms, i.e. 4 distinct phases of a 10 ms gap) keep
  their chunks falling due together, and the gateway gets them in batches;
- ``wheel``: all streams share one timer wheel with 1 ms buckets and no phase: streams due in the
  same millisecond are served by one timer callback (1000 streams cost one timer handle, not
  1000). Cheaper for this process, but chunks of many streams reach the gateway in the same loop
  iteration, which hides the gateway's per-wake-up cost. Kept as a named variant.

Behaviour is chosen by the requested model name:

- anything -> first chunk after ``--first-ms``, then one content chunk every ``--gap-ms``,
  ``--chunks`` content chunks, a finish chunk, a usage chunk when
  ``stream_options.include_usage`` is true, then ``data: [DONE]``.
  A non-streaming request gets one ``chat.completion`` after the same total time
  (first-ms + chunks * gap-ms).
- a name starting with ``slow`` -> the first chunk comes after ``--slow-first-ms`` (default
  600000 = 10 minutes): response headers go out at once, then silence. For idle-stream tests.
- tokens ``-f<ms>``, ``-g<ms>``, ``-n<count>`` anywhere in the name override first-ms, gap-ms
  and chunks for that model, e.g. ``fast-n100-g5``.

``POST /v1/embeddings`` (and ``/embeddings``): OpenAI's ``list`` of float vectors, one per input
(a string, strings, or token arrays), after ``--embed-ms``; ``dimensions`` (default
``--embed-dims``) long, the same deterministic vector for every input (its JSON is encoded once per
length), and usage counting a token per four bytes of a string or one per token.

Other routes: ``GET /v1/models`` (and ``/models``), ``GET /health``, ``GET /stats``
(``active_streams``: chat calls in progress, streaming or not; ``peak_streams``: the most at once
since the last ``/stats?reset=1``; totals; ``tls_connections``, ``h2_connections``, ``h2_requests``)
so a runner can see how many upstream calls the gateway really holds open, and over what.

``--tls --ca-file PATH``: TLS with a throwaway CA (``trustme``) whose PEM goes to PATH (give it to
the gateway as ``SSL_CERT_FILE``), and HTTP/2 when the client picks ``h2`` by ALPN (``--alpn``;
``upstream_h2.py``), HTTP/1.1 otherwise: the same routes, payloads and timers either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ssl

_OVERRIDE = re.compile(r"-([fgn])(\d+)")
_MAX_CACHED_MODELS = 256
_CREATED = int(time.time())
_HEADER_END = b"\r\n\r\n"
_MAX_HEADER = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
EMBEDDINGS_PATHS = ("/v1/embeddings", "/embeddings")
_MAX_DIMENSIONS = 65536

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)
CHUNKED_END = b"0\r\n\r\n"


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: int, reason: str | bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n\r\n%b" % (
        status,
        reason.encode() if isinstance(reason, str) else reason,
        content_type,
        len(body),
        body,
    )


def _error_body(message: str, code: str | None = None) -> bytes:
    return _json({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})


def _error(status: int, reason: str, message: str, code: str | None = None) -> bytes:
    return _response(status, reason, _error_body(message, code))


#: A plain answer, whatever the protocol: (status, reason, JSON body).
Answer = tuple[int, bytes, bytes]


class Payload:
    """Everything one model name sends, encoded once."""

    __slots__ = (
        "chunks",
        "first_s",
        "gap_s",
        "json_body",
        "json_response",
        "model",
        "sse_events",
        "sse_frames",
        "tail",
        "tail_events",
        "tail_usage",
        "tail_usage_events",
    )

    def __init__(self, model: str, first_ms: float, gap_ms: float, chunks: int) -> None:
        self.model = model
        self.first_s = first_ms / 1000.0
        self.gap_s = gap_ms / 1000.0
        self.chunks = chunks
        base = {"id": f"chatcmpl-lt-{model}", "object": "chat.completion.chunk", "created": _CREATED, "model": model}
        words = [f" w{i}" for i in range(chunks)]

        def sse(obj: Any) -> bytes:
            return b"data: " + _json(obj) + b"\n\n"

        # The SSE events as they are (HTTP/2 DATA frames carry them) and in HTTP/1.1 chunks.
        events = []
        for i, word in enumerate(words):
            delta: dict[str, Any] = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            events.append(sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
        self.sse_events = events
        self.sse_frames = [_http_chunk(e) for e in events]
        finish = sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
        usage_event = sse({**base, "choices": [], "usage": usage})
        done = b"data: [DONE]\n\n"
        self.tail_events = finish + done
        self.tail_usage_events = finish + usage_event + done
        self.tail = _http_chunk(finish) + _http_chunk(done) + CHUNKED_END
        self.tail_usage = _http_chunk(finish) + _http_chunk(usage_event) + _http_chunk(done) + CHUNKED_END
        body = {
            "id": f"chatcmpl-lt-{model}",
            "object": "chat.completion",
            "created": _CREATED,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
        self.json_body = _json(body)
        self.json_response = _response(200, "OK", self.json_body)

    @property
    def total_s(self) -> float:
        return self.first_s + self.chunks * self.gap_s


#: The golden ratio's fractional part: successive multiples mod 1 are as evenly spread as a sequence
#: can be (a low-discrepancy sequence), with no period a request pattern could line up with.
_GOLDEN = 0.6180339887498949


class PhaseSequence:
    """Each stream's phase, as a fraction of the gap: frac(start + k x golden ratio) for the k-th stream."""

    __slots__ = ("_next", "_start")

    def __init__(self, start: float = 0.0) -> None:
        self._start = start % 1.0
        self._next = self._start

    def take(self) -> float:
        phase = self._next
        self._next = (phase + _GOLDEN) % 1.0
        return phase

    def reset(self) -> None:
        self._next = self._start


TIMERS = ("stream", "wheel")


class Ticking(Protocol):
    """A call in progress (an HTTP/1.1 connection's, an HTTP/2 stream's): its timer calls ``tick``."""

    def tick(self) -> None: ...


class Upstream:
    """Shared state: payload cache, the timers (per stream or the 1 ms wheel), counters."""

    def __init__(
        self,
        first_ms: float,
        gap_ms: float,
        chunks: int,
        slow_first_ms: float,
        timers: str = "stream",
        embed_ms: float = 50.0,
        embed_dims: int = 1536,
    ) -> None:
        if timers not in TIMERS:
            raise ValueError(f"timers must be one of {TIMERS}")
        self.loop = asyncio.get_running_loop()
        self.embed_s = embed_ms / 1000.0
        self.embed_dims = embed_dims
        self._vectors: dict[int, bytes] = {}
        self.embeddings = 0
        self.timers = timers
        self.phases = PhaseSequence()
        self.first_ms = first_ms
        self.gap_ms = gap_ms
        self.chunks = chunks
        self.slow_first_ms = slow_first_ms
        self._payloads: dict[str, Payload] = {}
        self._buckets: dict[int, list[Ticking]] = {}
        self.active = 0
        self.peak = 0
        self.requests = 0
        self.streams = 0
        self.completed = 0
        self.cancelled = 0
        self.connections = 0
        self.open_connections = 0
        self.tls_connections = 0
        self.h2_connections = 0
        self.h2_requests = 0

    def payload(self, model: str) -> Payload:
        p = self._payloads.get(model)
        if p is None:
            first, gap, n = self.first_ms, self.gap_ms, self.chunks
            if model.startswith("slow"):
                first = self.slow_first_ms
            for key, value in _OVERRIDE.findall(model):
                if key == "f":
                    first = float(value)
                elif key == "g":
                    gap = float(value)
                else:
                    n = max(1, int(value))
            p = Payload(model, first, gap, n)
            if len(self._payloads) >= _MAX_CACHED_MODELS:
                self._payloads.clear()
            self._payloads[model] = p
        return p

    def schedule(self, conn: Ticking, when: float) -> None:
        if self.timers == "stream":
            self.loop.call_at(when, conn.tick)  # one timer per stream, as a real provider connection has
            return
        key = int(when * 1000.0) + 1  # the first 1 ms tick at or after `when`
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [conn]
            self.loop.call_at(key / 1000.0, self._fire, key)
        else:
            bucket.append(conn)

    def _fire(self, key: int) -> None:
        for conn in self._buckets.pop(key, ()):
            conn.tick()

    def stream_started(self) -> None:
        self.active += 1
        if self.active > self.peak:
            self.peak = self.active

    def call_ended(self, completed: bool) -> None:
        """A chat call is over: all sent (completed), or its client went away (cancelled)."""
        self.active -= 1
        if completed:
            self.completed += 1
        else:
            self.cancelled += 1

    def chat_request(self, body: bytes) -> tuple[Payload, bool, bool] | str:
        """(payload, stream, include_usage) of a chat call, or why it is refused (a 400)."""
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return f"Invalid JSON body: {exc}"
        stream = req.get("stream") is True
        opts = req.get("stream_options")
        usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
        return self.payload(str(req.get("model", ""))), stream, usage

    def _vector(self, dimensions: int) -> bytes:
        """The JSON of the vector every input gets, ``dimensions`` long: deterministic, encoded once."""
        vector = self._vectors.get(dimensions)
        if vector is None:
            values = [round(((i * 37) % 101) / 101.0 - 0.5, 6) for i in range(dimensions)]
            vector = self._vectors[dimensions] = _json(values)
        return vector

    def embeddings_answer(self, body: bytes) -> Answer:
        """``POST /v1/embeddings``: a vector per input, or why the request is refused (a 400)."""
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return 400, b"Bad Request", _error_body(f"Invalid JSON body: {exc}")
        value = req.get("input")
        if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
            inputs = [value]
        elif isinstance(value, list) and value:
            inputs = value
        else:
            return 400, b"Bad Request", _error_body("`input` must be a string, strings or token arrays", "input")
        dimensions = req.get("dimensions", self.embed_dims)
        if type(dimensions) is not int or not 0 < dimensions <= _MAX_DIMENSIONS:
            return 400, b"Bad Request", _error_body("`dimensions` must be a positive integer", "dimensions")
        self.embeddings += 1
        vector = self._vector(dimensions)
        tokens = sum(len(v) if isinstance(v, list) else len(str(v).encode()) // 4 + 1 for v in inputs)
        data = b",".join(b'{"object":"embedding","index":%d,"embedding":%b}' % (i, vector) for i in range(len(inputs)))
        usage = b'{"prompt_tokens":%d,"total_tokens":%d}' % (tokens, tokens)
        model = _json(str(req.get("model", "")))
        return 200, b"OK", b'{"object":"list","data":[%b],"model":%b,"usage":%b}' % (data, model, usage)

    def begin(self, payload: Payload, stream: bool) -> float:
        """Count a chat call that starts now; return when its first tick is due."""
        self.stream_started()
        now = self.loop.time()
        if not stream:
            return now + payload.total_s
        self.streams += 1
        due = now + payload.first_s
        if self.timers == "stream":
            due += self.phases.take() * payload.gap_s  # this stream's own phase
        return due

    def answer(self, method: str, path: str, query: str) -> Answer:
        """Every route but the chat call's, the same over HTTP/1.1 and HTTP/2."""
        if method == "GET" and path in ("/v1/models", "/models"):
            names = ["fast", "full", "slow"]
            data = [{"id": n, "object": "model", "created": _CREATED, "owned_by": "loadtest"} for n in names]
            return 200, b"OK", _json({"object": "list", "data": data})
        if method == "GET" and path == "/health":
            return 200, b"OK", b'{"status":"ok"}'
        if method == "GET" and path == "/stats":
            return 200, b"OK", self.stats(reset="reset=1" in query)
        return 404, b"Not Found", _error_body(f"Unknown route {method} {path}", "unknown_url")

    def stats(self, reset: bool) -> bytes:
        body = _json(
            {
                "active_streams": self.active,
                "peak_streams": self.peak,
                "requests": self.requests,
                "streams": self.streams,
                "completed": self.completed,
                "cancelled": self.cancelled,
                "connections": self.connections,
                "open_connections": self.open_connections,
                "tls_connections": self.tls_connections,
                "h2_connections": self.h2_connections,
                "h2_requests": self.h2_requests,
                "embeddings": self.embeddings,
                "timers": self.timers,
            }
        )
        if reset:
            self.peak = self.active
            self.phases.reset()  # every cell sees the same set of phases
        return body


class Conn(asyncio.Protocol):
    """One client connection; requests are served one after another (pipelined ones wait)."""

    __slots__ = (
        "buf",
        "busy",
        "close_after",
        "closed",
        "due",
        "index",
        "payload",
        "stream",
        "transport",
        "up",
        "usage",
    )

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False
        self.close_after = False
        self.payload: Payload | None = None
        self.stream = False
        self.usage = False
        self.index = 0
        self.due = 0.0

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.up.connections += 1
        self.up.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.up.open_connections -= 1
        if self.busy and self.payload is not None:
            self.busy = False
            self.up.call_ended(completed=False)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next_request()

    # -- requests --------------------------------------------------------------

    def _next_request(self) -> None:
        while not self.busy and not self.closed:
            end = self.buf.find(_HEADER_END)
            if end < 0:
                if len(self.buf) > _MAX_HEADER:
                    self._finish_write(_error(431, "Request Header Fields Too Large", "header too large"), close=True)
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._finish_write(_error(400, "Bad Request", "bad request line"), close=True)
                return
            length = 0
            keep_alive = version != "HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        self._finish_write(_error(400, "Bad Request", "bad content-length"), close=True)
                        return
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self._finish_write(_error(411, "Length Required", "send Content-Length"), close=True)
                    return
                elif name == "connection":
                    v = value.strip().lower()
                    if v == "close":
                        keep_alive = False
                    elif v == "keep-alive":
                        keep_alive = True
            if length > _MAX_BODY:
                self._finish_write(_error(413, "Payload Too Large", "body too large"), close=True)
                return
            start = end + 4
            if len(self.buf) < start + length:
                return  # wait for the rest of the body
            body = bytes(self.buf[start : start + length])
            del self.buf[: start + length]
            self.close_after = not keep_alive
            self._dispatch(method, target, body)

    def _dispatch(self, method: str, target: str, body: bytes) -> None:
        up = self.up
        up.requests += 1
        path, _, query = target.partition("?")
        path = path.rstrip("/")
        if method == "POST" and path in CHAT_PATHS:
            self._chat(body)
        elif method == "POST" and path in EMBEDDINGS_PATHS:
            self._embeddings(body)
        else:
            status, reason, answer = up.answer(method, path, query)
            self._finish_write(_response(status, reason, answer))

    def _chat(self, body: bytes) -> None:
        up = self.up
        call = up.chat_request(body)
        if isinstance(call, str):
            self._finish_write(_error(400, "Bad Request", call))
            return
        payload, self.stream, self.usage = call
        self.payload = payload
        self.busy = True
        self.index = 0
        if self.stream:
            assert self.transport is not None
            self.transport.write(SSE_HEAD)
        self.due = up.begin(payload, self.stream)
        up.schedule(self, self.due)

    def _embeddings(self, body: bytes) -> None:
        status, reason, answer = self.up.embeddings_answer(body)
        if status != 200:
            self._finish_write(_response(status, reason, answer))
            return
        # Busy until the answer goes out, as a call to a real provider is: pipelined requests wait.
        self.busy = True
        self.up.loop.call_later(self.up.embed_s, self._embedded, _response(status, reason, answer))

    def _embedded(self, response: bytes) -> None:
        if self.closed:
            return
        self.busy = False
        self._finish_write(response)
        if self.buf and not self.closed:
            self._next_request()

    def tick(self) -> None:
        if self.closed or not self.busy or self.payload is None:
            return
        p = self.payload
        transport = self.transport
        assert transport is not None
        if not self.stream:
            self.busy = False
            self.up.call_ended(completed=True)
            self._finish_write(p.json_response)
            if self.buf and not self.closed:
                self._next_request()
            return
        i = self.index
        frame = p.sse_frames[i]
        i += 1
        self.index = i
        if i >= len(p.sse_frames):
            transport.write(frame + (p.tail_usage if self.usage else p.tail))
            self.busy = False
            self.up.call_ended(completed=True)
            if self.close_after:
                transport.close()
                return
            if self.buf:
                self._next_request()
            return
        transport.write(frame)
        self.due += p.gap_s
        self.up.schedule(self, self.due)

    def _finish_write(self, data: bytes, close: bool = False) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if close or self.close_after:
            self.closed = True
            self.transport.close()


def tls_context(ca_file: str, alpn: list[str]) -> ssl.SSLContext:
    """A server context with a certificate for loopback from a throwaway CA, whose PEM goes to ``ca_file``."""
    import ssl

    import trustme  # a dev dependency: only the TLS mode needs it

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost", "::1").configure_cert(ctx)
    ctx.set_alpn_protocols(alpn)
    ca.cert_pem.write_to_path(ca_file)
    return ctx


async def serve(host: str, port: int, args: argparse.Namespace) -> None:
    up = Upstream(
        args.first_ms, args.gap_ms, args.chunks, args.slow_first_ms, args.timers, args.embed_ms, args.embed_dims
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if args.tls:
        from loadtests.upstream_h2 import AlpnSwitch

        ctx = tls_context(args.ca_file, args.alpn.split(","))
        server = await loop.create_server(lambda: AlpnSwitch(up), sock=sock, backlog=args.backlog, ssl=ctx)
    else:
        server = await loop.create_server(lambda: Conn(up), sock=sock, backlog=args.backlog)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    try:
        if args.max_seconds > 0:
            await asyncio.wait_for(stop.wait(), args.max_seconds)
        else:
            await stop.wait()
    except TimeoutError:
        print("upstream: --max-seconds reached, exiting", file=sys.stderr, flush=True)
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fast fake OpenAI-compatible upstream (loopback only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as READY <port>)")
    parser.add_argument("--first-ms", type=float, default=50.0, help="delay before the first chunk")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="delay between content chunks")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--slow-first-ms", type=float, default=600_000.0, help="first-chunk delay of slow* models")
    parser.add_argument("--embed-ms", type=float, default=50.0, help="delay before an embeddings answer")
    parser.add_argument(
        "--embed-dims", type=int, default=1536, help="an embedding's length when the request gives no dimensions"
    )
    parser.add_argument(
        "--timers",
        choices=TIMERS,
        default="stream",
        help="stream: a timer per stream with its own phase (default); wheel: one shared 1 ms wheel, no phase",
    )
    parser.add_argument("--backlog", type=int, default=8192)
    parser.add_argument("--max-seconds", type=float, default=0.0, help="exit by itself after this long (0 = never)")
    parser.add_argument("--tls", action="store_true", help="TLS with a throwaway CA; HTTP/2 when ALPN picks h2")
    parser.add_argument("--ca-file", help="with --tls: where to write the CA's PEM (the client's SSL_CERT_FILE)")
    parser.add_argument(
        "--alpn", default="h2,http/1.1", help="with --tls: the protocols offered, e.g. http/1.1 for TLS without h2"
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    if args.tls and not args.ca_file:
        parser.error("--tls needs --ca-file: the client must trust the throwaway CA")
    raise_nofile_limit()
    import uvloop

    uvloop.run(serve(args.host, args.port, args))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The importable module's main, not this __main__ copy's: upstream_h2 imports loadtests.upstream,
    # and both protocols must count in the same Upstream class's instance.
    from loadtests.upstream import main as _main

    sys.exit(_main())
