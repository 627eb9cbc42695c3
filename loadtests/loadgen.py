"""Load generator for the chat gateway (and for the fake upstream directly).

    python -m loadtests.loadgen --url http://127.0.0.1:8000 --mode sse --model fast \\
        --concurrency 256 --requests 2000 --duration 30 --pid <gateway pid>

Modes: ``sse`` (POST, ``Accept: text/event-stream``, ``"stream": true``), ``ws`` (one WebSocket
per virtual user, subprotocol ``chat.v1``, sequential ``chat.completion.create`` requests on it)
and ``json`` (plain POST). ``--idle N`` instead opens N SSE streams against a slow model, samples
the server's RSS with all of them open and reports the memory each open stream costs.

Every run is bounded: no request starts after ``--duration`` seconds or once ``--requests`` have
started, every request is bounded by ``--timeout``, and the whole run by duration + timeout + 10 s.

Without options a run has the shape of one ``run_matrix`` cell, so that both give the same figures:
max(50, 10 x concurrency) requests, users starting spread over 0.24 s (``--ramp``), after one
unmeasured warm-up round of ``concurrency`` requests (``--warmup``; a fresh server's first
requests pay for lazy imports and new upstream connections).

The client is a raw ``asyncio.Protocol`` (HTTP/1.1 keep-alive, chunked bodies, incremental SSE
parsing, a minimal RFC 6455 client) on uvloop: no per-event coroutine, no per-event JSON decode.
An ``https://`` URL is read over TLS (HTTP/1.1 by ALPN), trusting ``SSL_CERT_FILE``.
A chunk counts as a *content chunk* when its JSON has a non-empty ``"content"`` string.

Measured per request: TTFB (request written -> first content chunk; for JSON, -> response
headers), the gaps between consecutive content chunks, the tail (last content chunk -> ``[DONE]``
or the ``done`` frame) and the total time; per connection, the connect time (TCP connect, plus
the handshake for WebSocket: a new SSE connection's accept wait shows in its first TTFB instead). The summary has
p50/p95/p99 of each, req/s, chunks/s and errors by kind (``http_<status>``, ``sse_error``,
``ws_error_<status>``, ``timeout``, ``no_done``, ``conn_closed``, ``connect``...). With ``--pid``
the server's CPU (``/proc/<pid>/stat`` utime+stime) is read before and after and its RSS
(``/proc/<pid>/status`` VmRSS) is sampled during the run (max reported); the machine's CPU
(``/proc/stat``) is read too, and what neither the server, the upstream nor the generator used is
reported as ``host.others_cores``: other work on shared cores, the run's noise.

Output: one JSON line (the summary, for ``run_matrix``) then one human line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import re
import resource
import ssl
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

CONTENT_RE = re.compile(rb'"content"\s*:\s*"[^"]')


@dataclass(frozen=True)
class Api:
    """A client API the load runs through: its path, and how its SSE events say content and end."""

    path: str
    content: re.Pattern[bytes]  # an event (or a JSON answer) carrying generated text
    end: re.Pattern[bytes] | None  # the last event's data (None: the stream ends with ``[DONE]``)


#: Chat completions, OpenAI's Responses API and Anthropic's Messages API (SSE; chat also ws and json).
APIS = {
    "chat": Api("/v1/chat/completions", CONTENT_RE, None),
    "responses": Api(
        "/v1/responses",
        re.compile(rb'"type"\s*:\s*"response\.output_text\.delta"'),
        re.compile(rb'^\{"type"\s*:\s*"response\.(completed|incomplete|failed)"'),
    ),
    "messages": Api(
        "/v1/messages",
        re.compile(rb'"type"\s*:\s*"text_delta"'),
        re.compile(rb'^\{"type"\s*:\s*"message_stop"'),
    ),
    # JSON only: an answer is good when it holds an embedding.
    "embeddings": Api("/v1/embeddings", re.compile(rb'"embedding"\s*:'), None),
}
WS_TYPE_RE = re.compile(rb'"type"\s*:\s*"(chat\.completion\.chunk|chat\.completion\.done|error)"')
#: An ``error`` event of the Responses WebSocket mode (its events are the SSE events' data, one per frame).
WS_ERROR_EVENT_RE = re.compile(rb'^\{"type"\s*:\s*"error"')
#: The APIs loadgen can run over WebSocket: chat completions' frames, and the Responses WebSocket mode.
WS_APIS = ("chat", "responses")
STATUS_RE = re.compile(rb'"status"\s*:\s*(\d+)')
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("sse", "ws", "json")

# A cell's shape when the command line does not say otherwise: the same as ``run_matrix``'s, so that
# a plain run of one cell measures what the matrix's cell measures.
#: requests = max(MIN_REQUESTS, ROUNDS x concurrency): ten rounds per user, so the ramp-up and the
#: last round's tail are a small part of the run, and the server's CPU (read in 10 ms ticks) is
#: read over a second or more.
ROUNDS = 10
MIN_REQUESTS = 50
#: Users start spread over one stream of the default fake upstream (50 ms to the first chunk, then
#: 19 x 10 ms): concurrency N is N streams in flight, not N requests in the same millisecond.
RAMP_S = 0.24

# HTTP response parser states
_HEAD, _CL, _CSIZE, _CDATA, _CCRLF, _TRAILER, _EOF, _WS = range(8)
_MAX_HEAD = 64 * 1024


# ---------------------------------------------------------------------------------------------
# /proc sampling


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit as far as the hard limit allows; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_cpu_s() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine, all cores, from /proc/stat's first line."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLK_TCK, (fields[7] if len(fields) > 7 else 0) / CLK_TCK


def proc_wakeups(pid: int) -> int | None:
    """How often the process's main thread (the event loop) went to sleep and was woken again.

    ``voluntary_ctxt_switches``: each one is a wait (epoll with nothing ready) that something ended.
    Per chunk relayed, it says how many chunks one wake-up handles: an idle process pays the wake-up
    (scheduler, cold caches) for every chunk; a busy one handles several per wake-up.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def proc_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssSampler:
    """Samples VmRSS of a pid every ``interval`` seconds in a task; keeps the max and the last."""

    def __init__(self, pid: int | None, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.max_mb: float | None = None
        self.last_mb: float | None = None
        self.first_mb: float | None = None
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> float | None:
        if self.pid is None:
            return None
        v = proc_rss_mb(self.pid)
        if v is not None:
            self.last_mb = v
            if self.first_mb is None:
                self.first_mb = v
            if self.max_mb is None or v > self.max_mb:
                self.max_mb = v
        return v

    def reset_max(self) -> None:
        self.max_mb = None

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.pid is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.sample()


# ---------------------------------------------------------------------------------------------
# statistics


def percentile(sorted_values: Any, q: float) -> float | None:
    n = len(sorted_values)
    if n == 0:
        return None
    return float(sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))])


def _dist_ms(values: Any) -> dict[str, float | None]:
    s = sorted(values)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        v = percentile(s, q)
        out[name] = None if v is None else round(v * 1000.0, 3)
    out["mean"] = round(sum(s) / len(s) * 1000.0, 3) if s else None
    out["max"] = round(s[-1] * 1000.0, 3) if s else None
    out["n"] = len(s)
    return out


class Stats:
    def __init__(self) -> None:
        self.ttfb: array[float] = array("d")
        self.gaps: array[float] = array("d")
        self.totals: array[float] = array("d")
        self.tails: array[float] = array("d")
        self.connects: array[float] = array("d")
        self.chunks = 0
        self.ok = 0
        self.started = 0
        self.cut = 0
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.chunks_per_request: Counter[int] = Counter()
        self.last_done = 0.0

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{kind}: {detail[:200]}" if detail else kind)


# ---------------------------------------------------------------------------------------------
# the client protocol


class ConnectError(Exception):
    pass


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + payload


class Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 (or WebSocket) connection running one request at a time."""

    def __init__(self, stats: Stats, mode: str, idle: bool = False, api: Api = APIS["chat"]) -> None:
        self.stats = stats
        self.mode = mode
        self.api = api
        self.idle = idle
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buf = bytearray()
        self.state = _HEAD
        self.remaining = 0
        self.conn_close = False
        self.fut: asyncio.Future[None] | None = None
        self.head_fut: asyncio.Future[int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.now = 0.0
        self._reset_request()
        self.ws_frag = bytearray()
        self.ws_frag_op = 0

    def _reset_request(self) -> None:
        self.t_sent = 0.0
        self.t_head: float | None = None
        self.t_first: float | None = None
        self.t_last = 0.0
        self.chunks = 0
        self.req_gaps: list[float] = []
        self.status = 0
        self.done = False
        self.err: str | None = None
        self.err_detail = ""
        self.body = bytearray()
        self.sse = bytearray()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_fut is not None and not self.head_fut.done():
            self.head_fut.set_result(0)
        if self.fut is not None and not self.fut.done():
            if self.state == _EOF and self.mode != "ws":
                self._complete()
            else:
                self._fail("conn_closed", repr(exc) if exc else "closed by peer")

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()
        self.buf += data
        if self.state == _WS:
            self._ws_parse()
        else:
            self._http_parse()

    # -- requests ------------------------------------------------------------------------

    def request(self, data: bytes, timeout: float) -> asyncio.Future[None]:
        assert self.transport is not None
        self._reset_request()
        fut = self.loop.create_future()
        self.fut = fut
        self.stats.started += 1
        self.timer = self.loop.call_later(timeout, self._on_timeout)
        self.transport.write(data)
        self.t_sent = time.perf_counter()
        return fut

    def _on_timeout(self) -> None:
        self.timer = None
        if self.fut is not None and not self.fut.done():
            detail = f"{'headers' if self.t_head else 'no headers'}, done={self.done}, chunks={self.chunks}"
            if self.mode == "ws":
                detail = f"ws, done={self.done}, chunks={self.chunks}"
            elif self.mode == "json":
                detail = f"{'headers' if self.t_head else 'no headers'}, status={self.status}"
            self._fail("timeout", detail)

    def cut(self) -> None:
        """The run's time cap: abort an in-flight request without judging it (counted as ``cut``)."""
        if self.fut is not None and not self.fut.done():
            self.stats.cut += 1
            self._finish()
        self.close(abort=True)

    def _fail(self, kind: str, detail: str = "") -> None:
        self.stats.error(kind, detail)
        self._finish()
        self.close(abort=True)

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def close(self, abort: bool = False) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _complete(self) -> None:
        """The response (or WS request) has ended: judge it and record it."""
        st = self.stats
        now = self.now or time.perf_counter()
        if self.mode == "json":
            if self.status != 200:
                st.error(f"http_{self.status}", bytes(self.body[:200]).decode("utf-8", "replace"))
            elif not self.api.content.search(self.body):
                st.error("no_content", bytes(self.body[:200]).decode("utf-8", "replace"))
            else:
                st.ok += 1
                if self.t_head is not None:
                    st.ttfb.append(self.t_head - self.t_sent)
                st.totals.append(now - self.t_sent)
        else:
            if self.mode == "sse" and self.status != 200:
                st.error(f"http_{self.status}", bytes(self.body[:200] or self.sse[:200]).decode("utf-8", "replace"))
            elif self.err is not None:
                st.error(self.err, self.err_detail)
            elif not self.done:
                st.error("no_done", f"chunks={self.chunks}")
            else:
                st.ok += 1
                if self.t_first is not None:
                    st.ttfb.append(self.t_first - self.t_sent)
                st.totals.append(now - self.t_sent)
                st.gaps.extend(self.req_gaps)
                if self.t_first is not None:
                    st.tails.append(now - self.t_last)
                st.chunks += self.chunks
                st.chunks_per_request[self.chunks] += 1
        st.last_done = now
        self._finish()
        if self.conn_close and self.mode != "ws":
            self.close()

    # -- HTTP response parsing -----------------------------------------------------------

    def _http_parse(self) -> None:
        buf = self.buf
        while buf:
            st = self.state
            if st == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > _MAX_HEAD:
                        self._fail("bad_response", "header too large")
                    return
                head = bytes(buf[:i]).decode("latin-1").split("\r\n")
                del buf[: i + 4]
                if self.t_head is None:
                    self.t_head = self.now
                try:
                    self.status = int(head[0].split(" ", 2)[1])
                except (IndexError, ValueError):
                    self._fail("bad_response", head[0])
                    return
                length: int | None = None
                chunked = False
                self.conn_close = head[0].startswith("HTTP/1.0")
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value.strip())
                    elif name == "transfer-encoding":
                        chunked = "chunked" in value.lower()
                    elif name == "connection":
                        self.conn_close = value.strip().lower() == "close"
                if self.status == 101:
                    self.state = _WS
                    if self.head_fut is not None and not self.head_fut.done():
                        self.head_fut.set_result(101)
                    if buf:
                        self._ws_parse()
                    return
                if self.head_fut is not None and not self.head_fut.done():
                    self.head_fut.set_result(self.status)
                if self.fut is None and not self.idle:
                    self._fail("bad_response", "response without a request")
                    return
                if chunked:
                    self.state = _CSIZE
                elif length is not None:
                    self.remaining = length
                    self.state = _CL
                    if length == 0:
                        self.state = _HEAD
                        self._end_of_body()
                else:
                    self.state = _EOF
            elif st == _CL:
                n = min(self.remaining, len(buf))
                self._body(buf[:n])
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    self.state = _HEAD
                    self._end_of_body()
            elif st == _CSIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                try:
                    size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
                except ValueError:
                    self._fail("bad_response", "bad chunk size")
                    return
                del buf[: i + 2]
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.remaining = size
                    self.state = _CDATA
            elif st == _CDATA:
                n = min(self.remaining, len(buf))
                self._body(buf[:n])
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    self.state = _CCRLF
            elif st == _CCRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = _CSIZE
            elif st == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                del buf[: i + 2]
                if i == 0:
                    self.state = _HEAD
                    self._end_of_body()
            elif st == _EOF:
                self._body(buf)
                buf.clear()
                return
            else:  # pragma: no cover
                return
            if self.closed:
                return

    def _end_of_body(self) -> None:
        if self.idle:
            return
        if self.fut is not None:
            self._complete()

    def _body(self, data: bytearray) -> None:
        if self.idle:
            return
        if self.mode == "json" or self.status != 200:
            self.body += data
            return
        sse = self.sse
        sse += data
        if b"\r" in data:
            sse[:] = sse.replace(b"\r\n", b"\n")
        while True:
            j = sse.find(b"\n\n")
            if j < 0:
                return
            block = bytes(sse[:j])
            del sse[: j + 2]
            self._sse_event(block)

    def _sse_event(self, block: bytes) -> None:
        # Comment lines (the heartbeat, one line in front of the next event) match neither field.
        data: bytes | None = None
        is_error = False
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                d = line[6:] if line[5:6] == b" " else line[5:]
                data = d if data is None else data + b"\n" + d
            elif line.startswith(b"event:") and line[6:].strip() == b"error":
                is_error = True
        if data is None:
            return
        api = self.api
        if is_error:
            self.err = "sse_error"
            self.err_detail = data[:200].decode("utf-8", "replace")
        elif data == b"[DONE]" if api.end is None else api.end.match(data) is not None:
            self.done = True
        elif api.content.search(data):
            self._content_chunk()

    def _content_chunk(self) -> None:
        now = self.now
        if self.t_first is None:
            self.t_first = now
        else:
            self.req_gaps.append(now - self.t_last)
        self.t_last = now
        self.chunks += 1

    # -- WebSocket -----------------------------------------------------------------------

    def _ws_parse(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            op = b0 & 0x0F
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            mask = b""
            if b1 & 0x80:
                if len(buf) < pos + 4:
                    return
                mask = bytes(buf[pos : pos + 4])
                pos += 4
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if mask and n:
                key = (mask * (n // 4 + 1))[:n]
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
            if op == 9:  # ping
                if self.transport is not None and not self.closed:
                    self.transport.write(ws_frame(payload, 10))
                continue
            if op == 10:
                continue
            if op == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.transport is not None and not self.closed:
                    self.transport.write(ws_frame(payload[:2], 8))
                if self.fut is not None and not self.fut.done():
                    self._fail("ws_closed", f"close code {code} {payload[2:100]!r}")
                else:
                    self.close()
                return
            fin = b0 & 0x80
            if op == 0:
                self.ws_frag += payload
                if not fin:
                    continue
                payload = bytes(self.ws_frag)
                self.ws_frag.clear()
            elif not fin:
                self.ws_frag[:] = payload
                self.ws_frag_op = op
                continue
            self._ws_message(payload)
            if self.closed:
                return

    def _ws_message(self, msg: bytes) -> None:
        if self.fut is None:
            return  # a late frame for a request that timed out
        if self.api.end is not None:
            self._ws_event(msg)
            return
        m = WS_TYPE_RE.search(msg)
        kind = m.group(1) if m else None
        if kind == b"chat.completion.chunk":
            if CONTENT_RE.search(msg):
                self._content_chunk()
        elif kind == b"chat.completion.done":
            self.done = True
            self._complete()
        elif kind == b"error":
            s = STATUS_RE.search(msg)
            self.err = f"ws_error_{s.group(1).decode() if s else 'unknown'}"
            self.err_detail = msg[:200].decode("utf-8", "replace")
            self._complete()

    def _ws_event(self, msg: bytes) -> None:
        """A Responses WebSocket-mode frame: one event, read as its SSE ``data`` would be."""
        api = self.api
        if api.end is not None and api.end.match(msg) is not None:
            self.done = True
            self._complete()
        elif WS_ERROR_EVENT_RE.match(msg) is not None:
            s = STATUS_RE.search(msg)
            self.err = f"ws_error_{s.group(1).decode() if s else 'unknown'}"
            self.err_detail = msg[:200].decode("utf-8", "replace")
            self._complete()
        elif api.content.search(msg):
            self._content_chunk()


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class LoadConfig:
    url: str
    mode: str = "sse"
    model: str = "fast"
    concurrency: int = 1
    requests: int = 100
    duration: float = 30.0
    timeout: float = 30.0
    drain: float | None = None
    path: str = ""  # default: the API's own path
    #: The client API: "chat" (chat completions: sse, ws, json), "responses" (sse, ws) or "messages" (sse).
    api: str = "chat"
    pid: int | None = None
    upstream_pid: int | None = None
    include_usage: bool = False
    prompt: str = "Say hello."
    connect_parallel: int = 256
    idle_parallel: int = 64
    sample_interval: float = 0.25
    headers: dict[str, str] = field(default_factory=dict)
    #: Fields added to every request's body (e.g. a Responses ``previous_response_id``).
    extra_body: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    #: Seconds over which the users start, evenly spaced (user i waits i x ramp / concurrency):
    #: concurrency N in steady state rather than N requests arriving within the same millisecond.
    ramp: float = 0.0
    #: Requests run first, at the same concurrency and ramp, and not measured (neither their
    #: latencies nor the server's CPU): a server's first requests pay for lazy imports, caches and
    #: new upstream connections that the rest do not.
    warmup: int = 0


def _target(url: str, path: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if host not in LOOPBACK:
        raise ValueError(f"loopback only: {host!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    full = (parts.path or "").rstrip("/") + path
    return host, port, full


def client_ssl(url: str, ca_file: str | None = None) -> ssl.SSLContext | None:
    """TLS for an ``https://`` URL, offering HTTP/1.1 only by ALPN (this client does not speak h2).

    The default context trusts ``SSL_CERT_FILE`` (OpenSSL reads it), as the gateway does: give it the
    fake upstream's throwaway CA (``loadtests.upstream --tls --ca-file``), or pass ``ca_file``.
    """
    if urlsplit(url).scheme != "https":
        return None
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _body(cfg: LoadConfig, stream: bool | None) -> dict[str, Any]:
    if cfg.api == "responses":
        return {"model": cfg.model, "input": cfg.prompt, "stream": bool(stream)}
    if cfg.api == "embeddings":
        return {"model": cfg.model, "input": cfg.prompt, "encoding_format": "float"}
    if cfg.api == "messages":
        messages = [{"role": "user", "content": cfg.prompt}]
        return {"model": cfg.model, "max_tokens": 1024, "messages": messages, "stream": bool(stream)}
    body: dict[str, Any] = {"model": cfg.model, "messages": [{"role": "user", "content": cfg.prompt}]}
    if stream is not None:
        body["stream"] = stream
    if cfg.include_usage and stream:
        body["stream_options"] = {"include_usage": True}
    return body


def http_request_bytes(cfg: LoadConfig, host: str, port: int, path: str, stream: bool) -> bytes:
    payload = json.dumps({**_body(cfg, stream), **cfg.extra_body}, separators=(",", ":")).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "User-Agent: chat-gateway-loadgen",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        f"Accept: {'text/event-stream' if stream else 'application/json'}",
    ]
    lines += [f"{k}: {v}" for k, v in cfg.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


class LoadRun:
    def __init__(self, cfg: LoadConfig) -> None:
        if cfg.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        native = "json" if cfg.api == "embeddings" else "sse"
        wire_ok = cfg.api == "chat" or cfg.mode == native or (cfg.mode == "ws" and cfg.api in WS_APIS)
        if cfg.api not in APIS or not wire_ok:
            raise ValueError(
                f"api must be one of {sorted(APIS)}; chat runs in every mode, responses in sse and ws, "
                "messages in sse, embeddings in json"
            )
        self.cfg = cfg
        self.api = APIS[cfg.api]
        self.host, self.port, self.path = _target(cfg.url, cfg.path or self.api.path)
        self.ssl = client_ssl(cfg.url)
        self.stats = Stats()
        self.remaining = cfg.requests
        self.deadline = 0.0
        self.conns: set[Client] = set()
        self.connect_sem = asyncio.Semaphore(cfg.connect_parallel)
        self.req_bytes = http_request_bytes(cfg, self.host, self.port, self.path, stream=cfg.mode == "sse")
        self.ws_prefix = b'{"type":"chat.completion.create","id":"'
        request = json.dumps({**_body(cfg, True), **cfg.extra_body}, separators=(",", ":")).encode()
        self.ws_suffix = b'","request":' + request + b"}"
        self.ws_seq = 0
        # The Responses WebSocket mode: a ``response.create`` frame (the create body, its stream implied).
        create = {k: v for k, v in {**_body(cfg, True), **cfg.extra_body}.items() if k != "stream"}
        self.ws_create = json.dumps({"type": "response.create", **create}, separators=(",", ":")).encode()

    def take(self) -> bool:
        if self.remaining <= 0 or time.monotonic() >= self.deadline:
            return False
        self.remaining -= 1
        return True

    async def connect(self, idle: bool = False) -> Client:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        mode = "sse" if idle else cfg.mode
        async with self.connect_sem:
            t0 = time.perf_counter()
            try:
                _, client = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: Client(self.stats, mode, idle, self.api),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                    ),
                    min(cfg.timeout, 15.0),
                )
            except (OSError, TimeoutError) as exc:
                raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
        self.conns.add(client)
        if mode == "ws":
            await self._ws_handshake(client)
        if not idle:
            self.stats.connects.append(time.perf_counter() - t0)
        return client

    async def _ws_handshake(self, client: Client) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Protocol: chat.v1",
            "User-Agent: chat-gateway-loadgen",
        ]
        lines += [f"{k}: {v}" for k, v in self.cfg.headers.items()]
        client.head_fut = asyncio.get_running_loop().create_future()
        assert client.transport is not None
        client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            status = await asyncio.wait_for(client.head_fut, min(self.cfg.timeout, 15.0))
        except TimeoutError as exc:
            client.close(abort=True)
            raise ConnectError("websocket handshake timed out") from exc
        finally:
            client.head_fut = None
        if status != 101:
            client.close(abort=True)
            raise ConnectError(f"websocket handshake answered {status}")

    def _next_request(self) -> bytes:
        if self.cfg.mode != "ws":
            return self.req_bytes
        if self.cfg.api == "responses":
            return ws_frame(self.ws_create)
        self.ws_seq += 1
        return ws_frame(self.ws_prefix + b"r%d" % self.ws_seq + self.ws_suffix)

    async def user(self, index: int = 0) -> None:
        conn: Client | None = None
        if self.cfg.ramp > 0 and index:
            await asyncio.sleep(index * self.cfg.ramp / self.cfg.concurrency)
        try:
            while self.take():
                if conn is None or conn.closed:
                    try:
                        conn = await self.connect()
                    except ConnectError as exc:
                        self.stats.started += 1
                        self.stats.error("connect", str(exc))
                        conn = None
                        await asyncio.sleep(0.05)
                        continue
                await conn.request(self._next_request(), self.cfg.timeout)
        finally:
            if conn is not None:
                conn.close()

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        nofile = raise_nofile_limit()
        server = RssSampler(cfg.pid, cfg.sample_interval)
        upstream = RssSampler(cfg.upstream_pid, cfg.sample_interval)
        cpu0 = proc_cpu_s(cfg.pid) if cfg.pid else None
        ucpu0 = proc_cpu_s(cfg.upstream_pid) if cfg.upstream_pid else None
        host0 = host_cpu_s()
        wake0 = proc_wakeups(cfg.pid) if cfg.pid else None
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        server.start()
        upstream.start()
        t0 = time.perf_counter()
        self.deadline = time.monotonic() + cfg.duration
        tasks = [asyncio.ensure_future(self.user(i)) for i in range(cfg.concurrency)]
        drain = cfg.timeout if cfg.drain is None else min(cfg.drain, cfg.timeout)
        _, pending = await asyncio.wait(tasks, timeout=cfg.duration + drain + 0.5)
        if pending:
            # Past the cap and its drain time: abort what is still in flight (reported as "cut", not
            # judged) and stop users that are still connecting.
            self.remaining = 0
            for c in list(self.conns):
                c.cut()
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=5)
            if pending:
                self.stats.error("hard_stop", f"{len(pending)} users did not stop")
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                self.stats.error("loadgen_bug", repr(t.exception()))
        for c in list(self.conns):
            c.close(abort=True)
        t_end = time.perf_counter()
        await server.stop()
        await upstream.stop()
        cpu1 = proc_cpu_s(cfg.pid) if cfg.pid else None
        ucpu1 = proc_cpu_s(cfg.upstream_pid) if cfg.upstream_pid else None
        host1 = host_cpu_s()
        wake1 = proc_wakeups(cfg.pid) if cfg.pid else None
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        summary = self.summary(t0, t_end, cpu0, cpu1, ucpu0, ucpu1, ru0, ru1, server, upstream, nofile)
        summary["host"] = self.host_summary(summary, host0, host1, t_end - t0)
        if summary["server"] is not None and wake0 is not None and wake1 is not None:
            chunks = summary["chunks"]
            summary["server"]["wakeups"] = wake1 - wake0
            summary["server"]["wakeups_per_1k_chunks"] = round((wake1 - wake0) / chunks * 1000) if chunks else None
        return summary

    @staticmethod
    def host_summary(
        summary: dict[str, Any], host0: tuple[float, float] | None, host1: tuple[float, float] | None, wall: float
    ) -> dict[str, Any] | None:
        """The machine's CPU over the run, and how much of it was neither ours nor the servers'.

        On a shared machine that is the noise: other work on the same cores makes every CPU second
        of the server's buy less (caches, memory bandwidth), so CPU per chunk rises with it.
        """
        if host0 is None or host1 is None or wall <= 0:
            return None
        busy = host1[0] - host0[0]
        ours = summary["loadgen"]["cpu_s"]
        for proc in (summary.get("server"), summary.get("upstream")):
            if proc and proc.get("cpu_s") is not None:
                ours += proc["cpu_s"]
        return {
            "cpus": os.cpu_count(),
            "busy_cores": round(busy / wall, 3),
            "others_cores": round(max(0.0, busy - ours) / wall, 3),
            "steal_s": round(host1[1] - host0[1], 3),
        }

    def summary(
        self,
        t0: float,
        t_end: float,
        cpu0: float | None,
        cpu1: float | None,
        ucpu0: float | None,
        ucpu1: float | None,
        ru0: Any,
        ru1: Any,
        server: RssSampler,
        upstream: RssSampler,
        nofile: tuple[int, int],
    ) -> dict[str, Any]:
        cfg, st = self.cfg, self.stats
        elapsed = max(1e-9, (st.last_done or t_end) - t0)
        wall = t_end - t0
        per_req = st.chunks_per_request
        errors = sum(st.errors.values())

        def proc(cpu_a: float | None, cpu_b: float | None, rss: RssSampler, pid: int | None) -> dict[str, Any] | None:
            if pid is None:
                return None
            cpu = None if cpu_a is None or cpu_b is None else round(cpu_b - cpu_a, 3)
            return {
                "pid": pid,
                "cpu_s": cpu,
                "cpu_util": None if cpu is None else round(cpu / wall, 3),
                "cpu_s_per_1k_chunks": None if cpu is None or not st.chunks else round(cpu / st.chunks * 1000, 4),
                "cpu_ms_per_request": None if cpu is None or not st.ok else round(cpu / st.ok * 1000, 3),
                "rss_mb_max": None if rss.max_mb is None else round(rss.max_mb, 1),
                "rss_mb_start": None if rss.first_mb is None else round(rss.first_mb, 1),
            }

        lg_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        return {
            "kind": "load",
            "label": cfg.label,
            "mode": cfg.mode,
            "url": cfg.url,
            "model": cfg.model,
            "concurrency": cfg.concurrency,
            "requests": st.started,
            "ok": st.ok,
            "errors": errors,
            "cut": st.cut,
            "error_kinds": dict(st.errors),
            "error_samples": st.error_samples,
            "elapsed_s": round(elapsed, 3),
            "req_per_s": round(st.ok / elapsed, 2),
            "chunks": st.chunks,
            "chunks_per_s": round(st.chunks / elapsed, 1),
            "chunks_per_request": {str(k): v for k, v in sorted(per_req.items())},
            "ttfb_ms": _dist_ms(st.ttfb),
            "gap_ms": _dist_ms(st.gaps),
            "total_ms": _dist_ms(st.totals),
            "tail_ms": _dist_ms(st.tails),
            "connect_ms": _dist_ms(st.connects),
            "server": proc(cpu0, cpu1, server, cfg.pid),
            "upstream": proc(ucpu0, ucpu1, upstream, cfg.upstream_pid),
            "loadgen": {"cpu_s": round(lg_cpu, 3), "cpu_util": round(lg_cpu / wall, 3)},
            "nofile": list(nofile),
        }


async def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """Run one bounded load and return its summary (the function tests import).

    With ``cfg.warmup``, that many requests run first, unmeasured, then the measured ones.
    """
    warm: dict[str, Any] | None = None
    if cfg.warmup > 0:
        unmeasured = replace(cfg, requests=cfg.warmup, warmup=0, pid=None, upstream_pid=None, label="warm-up")
        warm = await LoadRun(unmeasured).run()
    summary = await LoadRun(cfg).run()
    summary["warmup"] = None if warm is None else {k: warm[k] for k in ("requests", "ok", "errors", "error_kinds")}
    return summary


# ---------------------------------------------------------------------------------------------
# idle streams


async def http_get(url: str, timeout: float = 5.0, ca_file: str | None = None) -> tuple[int, bytes]:
    """A bounded one-shot GET (``Connection: close``); returns (status, body). Loopback only."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if host not in LOOPBACK:
        raise ValueError(f"loopback only: {host!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def go() -> tuple[int, bytes]:
        tls = client_ssl(url, ca_file)
        port = parts.port or (443 if tls else 80)
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            raw = await reader.read(-1)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            out, rest = bytearray(), body
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    break
                out += rest[:size]
                rest = rest[size + 2 :]
            body = bytes(out)
        return status, body

    return await asyncio.wait_for(go(), timeout)


async def _upstream_active(url: str | None) -> int | None:
    if not url:
        return None
    try:
        status, body = await http_get(url.rstrip("/") + "/stats", 2.0)
        return int(json.loads(body)["active_streams"]) if status == 200 else None
    except (OSError, TimeoutError, ValueError, KeyError, IndexError):
        return None


async def run_idle(cfg: LoadConfig, n: int, upstream_url: str | None = None, settle_s: float = 3.0) -> dict[str, Any]:
    """Open ``n`` SSE streams (against a slow model), measure the server RSS they cost, close them."""
    nofile = raise_nofile_limit()
    run = LoadRun(LoadConfig(**{**cfg.__dict__, "mode": "sse"}))
    sampler = RssSampler(cfg.pid, 0.2)
    base_samples = []
    for _ in range(5):
        v = sampler.sample()
        if v is not None:
            base_samples.append(v)
        await asyncio.sleep(0.2)
    base = min(base_samples) if base_samples else None
    up_before = await _upstream_active(upstream_url)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    deadline = loop.time() + cfg.timeout
    clients: list[Client] = []

    # At most `idle_parallel` streams are being opened (connect + request + headers) at once, so the
    # opening pace follows the server's: a connect storm would only overflow its accept queue.
    opening = asyncio.Semaphore(max(1, cfg.idle_parallel))

    async def open_one() -> int:
        async with opening:
            try:
                c = await run.connect(idle=True)
            except ConnectError as exc:
                run.stats.error("connect", str(exc))
                return 0
            clients.append(c)
            c.head_fut = loop.create_future()
            assert c.transport is not None
            c.transport.write(run.req_bytes)
            try:
                status = await asyncio.wait_for(c.head_fut, max(0.1, deadline - loop.time()))
            except TimeoutError:
                run.stats.error("timeout", "no response headers")
                return 0
        if status != 200:
            run.stats.error(f"http_{status}" if status else "conn_closed", "closed before response headers")
        return status

    sampler.start()
    tasks = [asyncio.ensure_future(open_one()) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=cfg.timeout + 5)
    for t in pending:
        t.cancel()
    opened = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result() == 200)
    open_s = time.perf_counter() - t0
    # Let the server finish opening its upstream calls; take the RSS plateau from here on.
    sampler.reset_max()
    settle_end = loop.time() + max(settle_s, 1.0)
    up_active = await _upstream_active(upstream_url)
    stable_since = loop.time()
    while loop.time() < settle_end + 7.0:
        await asyncio.sleep(0.5)
        now_active = await _upstream_active(upstream_url)
        if now_active != up_active:
            up_active, stable_since = now_active, loop.time()
        if loop.time() >= settle_end and loop.time() - stable_since >= 1.0:
            break
    sampler.sample()
    plateau = sampler.max_mb
    still_open = sum(1 for c in clients if not c.closed)
    for c in clients:
        c.close(abort=True)
    await asyncio.sleep(2.0)
    await sampler.stop()
    after = proc_rss_mb(cfg.pid) if cfg.pid else None
    per_stream_kb = None
    if base is not None and plateau is not None and opened:
        per_stream_kb = round((plateau - base) * 1024.0 / opened, 1)
    return {
        "kind": "idle",
        "label": cfg.label,
        "url": cfg.url,
        "model": cfg.model,
        "requested": n,
        "opened": opened,
        "still_open_at_sample": still_open,
        "errors": sum(run.stats.errors.values()),
        "error_kinds": dict(run.stats.errors),
        "error_samples": run.stats.error_samples,
        "open_s": round(open_s, 2),
        "base_rss_mb": None if base is None else round(base, 1),
        "open_rss_mb": None if plateau is None else round(plateau, 1),
        "after_close_rss_mb": None if after is None else round(after, 1),
        "rss_kb_per_stream": per_stream_kb,
        "upstream_active_before": up_before,
        "upstream_active_open": up_active,
        "nofile": list(nofile),
    }


# ---------------------------------------------------------------------------------------------
# output


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def human_line(s: dict[str, Any]) -> str:
    if s.get("kind") == "idle":
        return (
            f"idle {s['model']}: {s['opened']}/{s['requested']} streams open in {s['open_s']} s, "
            f"server RSS {_f(s['base_rss_mb'])} -> {_f(s['open_rss_mb'])} MB "
            f"({_f(s['rss_kb_per_stream'])} KB/stream), after close {_f(s['after_close_rss_mb'])} MB, "
            f"upstream active {s['upstream_active_open']}, errors {s['errors']} {s['error_kinds'] or ''}"
        )
    t, g, tot = s["ttfb_ms"], s["gap_ms"], s["total_ms"]
    line = (
        f"{s['mode']} c={s['concurrency']} {s['model']}: {s['ok']}/{s['requests']} ok, {s['errors']} errors"
        f"{' ' + str(s['error_kinds']) if s['error_kinds'] else ''}, {s['cut']} cut at the cap, "
        f"{s['req_per_s']} req/s, {s['chunks_per_s']} chunks/s, "
        f"TTFB p50/p95/p99 {_f(t['p50'])}/{_f(t['p95'])}/{_f(t['p99'])} ms, gap p99 {_f(g['p99'])} ms, "
        f"total p50 {_f(tot['p50'])} ms"
    )
    srv = s.get("server")
    if srv:
        line += f", server {_f(srv['cpu_s_per_1k_chunks'], '{:.3f}')} CPU s/1k chunks, RSS {_f(srv['rss_mb_max'])} MB"
    line += f", loadgen CPU {s['loadgen']['cpu_util'] * 100:.0f}%"
    host = s.get("host")
    if host:
        line += f", others on the machine {host['others_cores'] * 100:.0f}% CPU"
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Bounded load generator for the chat gateway (loopback only).")
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--path", default="", help="default: the API's path")
    p.add_argument("--api", choices=sorted(APIS), default="chat")
    p.add_argument("--mode", choices=MODES, default="sse")
    p.add_argument("--model", default="fast")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument(
        "--requests",
        type=int,
        help=f"total requests (a cap); default max({MIN_REQUESTS}, {ROUNDS} x concurrency), as run_matrix",
    )
    p.add_argument(
        "--warmup",
        type=int,
        help="requests run first and not measured (latencies, server CPU); default: one round (= concurrency)",
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds after which no request starts")
    p.add_argument("--timeout", type=float, default=30.0, help="per request (idle: for opening all streams)")
    p.add_argument(
        "--drain",
        type=float,
        help="seconds in-flight requests may still run after --duration (default: --timeout); "
        "then they are aborted and reported as 'cut', not as errors",
    )
    p.add_argument("--pid", type=int, help="server pid: CPU from /proc/P/stat, RSS from /proc/P/status")
    p.add_argument("--upstream-pid", type=int, help="upstream pid, measured the same way")
    p.add_argument("--upstream-url", help="idle mode: the fake upstream, to read its /stats")
    p.add_argument("--include-usage", action="store_true", help="send stream_options.include_usage")
    p.add_argument("--header", action="append", default=[], help="extra header 'Name: value' (repeatable)")
    p.add_argument("--idle", type=int, default=0, help="open N idle SSE streams and report RSS per stream")
    p.add_argument("--settle", type=float, default=3.0, help="idle mode: seconds to let the server settle")
    p.add_argument("--idle-parallel", type=int, default=64, help="idle mode: streams being opened at once")
    p.add_argument("--label", default="")
    p.add_argument("--extra-body", type=json.loads, default={}, help="a JSON object merged into every request body")
    p.add_argument(
        "--ramp",
        type=float,
        default=RAMP_S,
        help=f"seconds over which the users start (default {RAMP_S}: one default upstream stream; 0: all at once)",
    )
    a = p.parse_args(argv)
    headers = {}
    for h in a.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    cfg = LoadConfig(
        url=a.url,
        mode=a.mode,
        model=a.model,
        concurrency=max(1, a.concurrency),
        requests=max(0, a.requests) if a.requests is not None else max(MIN_REQUESTS, ROUNDS * max(1, a.concurrency)),
        warmup=max(0, a.warmup) if a.warmup is not None else max(1, a.concurrency),
        duration=a.duration,
        timeout=a.timeout,
        drain=a.drain,
        path=a.path,
        api=a.api,
        pid=a.pid,
        upstream_pid=a.upstream_pid,
        include_usage=a.include_usage,
        headers=headers,
        extra_body=dict(a.extra_body),
        label=a.label,
        idle_parallel=a.idle_parallel,
        ramp=max(0.0, a.ramp),
    )
    try:
        _target(cfg.url, cfg.path or APIS[cfg.api].path)
    except ValueError as exc:
        p.error(str(exc))
    import uvloop

    if a.idle > 0:
        summary = uvloop.run(run_idle(cfg, a.idle, a.upstream_url, a.settle))
    else:
        summary = uvloop.run(run_load(cfg))
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    print(human_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
