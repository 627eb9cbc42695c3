"""Run the whole load matrix in one go and write ``loadtests/results.md``.

    .venv/bin/python -m loadtests.run_matrix            # full matrix (< ~10 min on 2 cores)
    .venv/bin/python -m loadtests.run_matrix --quick    # a smaller, shorter version (~2 min)

What it does, all on 127.0.0.1:

1. starts the fake upstream (``python -m loadtests.upstream``) in its own process group, one per
   ``--timers`` variant: ``stream`` (the default and the headline rows: a timer per stream, each
   with its own phase, as separate provider connections are) and, when asked (``--timers
   stream,wheel``), ``wheel`` (all streams on one shared 1 ms timer wheel: the gateway gets chunks
   in batches, which flatters its CPU per chunk);
2. writes a gateway TOML into a temp dir (deployments ``fast`` = fast_path true, ``full`` =
   fast_path false, ``slow``/``slow_full`` = an upstream model whose first chunk comes after 10
   minutes; ``fast_wheel``/``full_wheel`` on the wheel upstream; with ``--resilience``,
   ``fast_resilient`` and the ``retry`` group on a provider failing at once; with ``--h2``,
   ``fast_h2`` on the TLS upstream, the gateway trusting its CA) and starts ``python -m app``
   with ``CHAT_CONFIG`` pointing at it, timing spawn -> ``/health/ready`` 200;
3. warms both paths up, then for each concurrency runs the direct-to-upstream SSE baseline and
   the gateway cells ({sse, ws} x {fast, full}); the variant's cells at ``--variant-concurrency``;
   issue 15's cells when asked (``--resilience``: ``fast`` vs ``fast_resilient`` and ``fast`` vs
   one ``retry``, back to back in rounds; ``--h2``: ``fast_h2`` on a TLS + HTTP/2 upstream);
   JSON at concurrency 32 (direct, fast, full); finally the idle-stream memory test (``--idle``);
4. each cell is one ``python -m loadtests.loadgen`` subprocess with the same shape as a plain
   loadgen run of that cell (ten rounds, users spread over one stream's length, one unmeasured
   warm-up round), bounded by requests, duration and a per-request timeout (the runner also kills
   it if it overruns), measuring the gateway's and the upstream's CPU and RSS from /proc and the
   CPU that other work on the machine took meanwhile;
5. writes the Markdown report and prints it. Every child is killed (its whole process group) on
   exit, on errors and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.loadgen import MIN_REQUESTS, ROUNDS, http_get, raise_nofile_limit
from loadtests.resilience_bench import deployment_toml, failing_provider_argv, retry_group
from loadtests.upstream import TIMERS

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PY = sys.executable

FULL_CONCURRENCY = [1, 32, 256, 1024]
_REGISTRIES: list[Children] = []  # for the synchronous last-resort kill in main()
QUICK_CONCURRENCY = [1, 32, 256]


# ---------------------------------------------------------------------------------------------
# child processes


class Children:
    """Every process the runner starts, each in its own session (= process group)."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        _REGISTRIES.append(self)

    async def spawn(self, argv: list[str], **kw: Any) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*argv, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the pid is the group id: start_new_session=True

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        if proc.returncode is None:
            self._signal(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                self._signal(proc, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5.0)
        else:
            self._signal(proc, signal.SIGKILL)  # leftovers of the group, if any
        if proc in self.procs:
            self.procs.remove(proc)

    async def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            await self.stop(proc)

    def kill_all_now(self) -> None:
        """Synchronous last resort (no event loop needed)."""
        for proc in self.procs:
            self._signal(proc, signal.SIGKILL)
        self.procs.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 30, width: int = 400) -> str:
    try:
        return "\n".join(line[:width] for line in path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# gateway config


def deployment_name(dep: str, timers: str, headline: str) -> str:
    """The gateway's deployment for ``dep`` on the upstream timed by ``timers`` (``fast``, ``fast_wheel``)."""
    return dep if timers == headline else f"{dep}_{timers}"


#: The deployments ``--resilience`` adds: the headline ``fast`` with retries and fallbacks, and a
#: group whose calls practically all fail once at once and are retried on the upstream.
RESILIENT = "fast_resilient"
RETRY = "retry"
#: The deployment ``--h2`` adds: ``fast`` on the TLS upstream, relayed over HTTP/2.
H2 = "fast_h2"
#: ``--floor-rounds``: the group of the cells that compare the gateway with the bare relay in rounds.
FLOOR_GROUP = "floor"
#: ``--adapter-rounds``: the group of the cells that compare the client APIs with chat completions in rounds.
ADAPTER_GROUP = "adapters"
#: Each client API's mode and the chat completions mode it is measured against (the same transport).
ADAPTER_BASES = {"responses": "sse", "messages": "sse", "responses_ws": "ws"}
#: The groups of issue 15's comparisons (``--resilience``, ``--h2``), the only ones its section reports.
ISSUE_15_GROUPS = frozenset({"resilience", "retry", "h2"})
#: ``--floors``: the cells' targets and the modules that serve them, the lowest first.
FLOORS = {"proto": "loadtests.protocol_floor", "asgi": "loadtests.asgi_floor"}


def gateway_toml(
    port: int,
    upstream_ports: dict[str, int],
    *,
    failing_port: int | None = None,
    h2_port: int | None = None,
    full_path: bool = True,
) -> str:
    """The gateway's TOML; the first upstream in ``upstream_ports`` is the headline one.

    ``failing_port`` (``--resilience``): a provider failing at once, for the ``retry`` group, and the
    ``fast_resilient`` deployment; ``h2_port`` (``--h2``): the TLS upstream for ``fast_h2``.
    ``full_path`` false: no deployment on LiteLLM's full path (``full``, ``slow_full``), so the gateway
    never imports LiteLLM, as a deployment of OpenAI-compatible providers only does not.
    """
    headline, *variants = upstream_ports
    api_base = f"http://127.0.0.1:{upstream_ports[headline]}/v1"
    deployments: list[tuple[str, str, bool, str, dict[str, Any]]] = [
        ("fast", "fast", True, api_base, {}),
        ("full", "full", False, api_base, {}),
        ("slow", "slow", True, api_base, {}),
        ("slow_full", "slow", False, api_base, {}),
    ]
    if failing_port is not None:
        deployments.append((RESILIENT, "fast", True, api_base, {"num_retries": 1, "fallbacks": ["fast"]}))
    if h2_port is not None:
        deployments.append((H2, "fast", True, f"https://127.0.0.1:{h2_port}/v1", {}))
    for timers in variants:  # the same models on the variant's upstream, under their own names
        variant_base = f"http://127.0.0.1:{upstream_ports[timers]}/v1"
        deployments += [
            (deployment_name("fast", timers, headline), "fast", True, variant_base, {}),
            (deployment_name("full", timers, headline), "full", False, variant_base, {}),
        ]
    if not full_path:
        deployments = [d for d in deployments if d[2]]
    parts = [
        "# generated by loadtests/run_matrix.py",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        # What a deployment runs with: the access log line per request (info), and limits on for
        # every caller (high enough never to refuse): admission and settlement are per-request work.
        'log_level = "info"',
        "workers = 1",
        "",
        "[rate_limit]",
        "requests_per_minute = 100000000",
        "tokens_per_minute = 10000000000",
        "concurrent_streams = 1000000",
        "",
        "[streaming]",
        "status_window_s = 0          # headers at once: measures streaming, not the status window",
        "first_token_timeout_s = 900  # the idle test holds slow streams open for a while",
        "idle_timeout_s = 900",
        "",
        "[websocket]",
        "max_inflight = 4096",
        "",
        "[models]",
    ]
    for name, upstream_model, fast_path, base, extra in deployments:
        parts += deployment_toml(name, base, upstream_model, fast_path=fast_path, timeout_s=900, **extra)
    # The embeddings cells' model: served by the headline upstream's /v1/embeddings over the relay.
    parts += deployment_toml(EMBED, api_base, EMBED, fast_path=True, timeout_s=900)
    parts += ["[models.deployments.info]", 'mode = "embedding"', ""]
    if failing_port is not None:
        parts += retry_group(RETRY, f"http://127.0.0.1:{failing_port}/v1", api_base, timeout_s=900)
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass
class Cell:
    target: str  # "direct" | "gateway"
    mode: str  # sse | ws | json
    model: str
    concurrency: int
    requests: int
    duration: float
    timeout: float
    timers: str = "stream"  # the upstream's timing: per-stream timers (headline) or the shared wheel
    upstream: str = ""  # the upstream it runs against: "" = the one of its timers; "h2" = the TLS one
    group: str = ""  # "" = a headline or variant cell; resilience, retry, h2 = the comparisons of issue 15
    round: int = 0  # the comparisons' cells run in rounds (0: not in rounds)
    summary: dict[str, Any] | None = None
    upstream_peak: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def up_key(self) -> str:
        return self.upstream or self.timers

    @property
    def measured(self) -> bool:
        """It ran and did not fail: its summary is a figure."""
        return bool(self.summary) and not (self.summary or {}).get("failed")

    @property
    def shown_model(self) -> str:
        """The model column: what the cell is, beyond the model name."""
        if self.group == "workers" and self.target == "gateway":
            return f"{self.model} ({self.extra['workers']} workers)"
        if self.upstream == "h2" and self.target == "direct":
            return f"{self.model} (TLS, HTTP/1.1)"  # loadgen speaks HTTP/1.1 only
        return f"{self.model} ({self.group} #{self.round})" if self.round else self.model

    @property
    def name(self) -> str:
        return f"{self.target} {self.mode} {self.shown_model} c={self.concurrency} ({self.timers} timers)"


#: Modes that are client APIs (loadgen's --api) over SSE or WebSocket (loadgen's --mode): gateway cells
#: only, compared with direct SSE.
API_MODES = {"responses": ("responses", "sse"), "responses_ws": ("responses", "ws"), "messages": ("messages", "sse")}
#: The embeddings cells' mode (loadgen's ``--api embeddings``, JSON) and model, gateway and direct
#: alike: at the JSON concurrency, compared with the upstream's own ``/v1/embeddings``.
EMBEDDINGS = "embeddings"
EMBED = "embed"


def build_plan(args: argparse.Namespace) -> list[Cell]:
    """Headline cells (the first of ``--timers``), then the same streaming cells for each variant."""
    modes = [m for m in args.modes if m in ("sse", "ws", *API_MODES)]
    headline = args.timers[0]
    cells: list[Cell] = []

    def n_requests(c: int) -> int:
        return max(args.min_requests, c * args.requests_factor)

    def cell(target: str, mode: str, dep: str, c: int, timers: str, **kw: Any) -> Cell:
        model = dep if target == "direct" else deployment_name(dep, timers, headline)
        return Cell(target, mode, model, c, n_requests(c), args.duration, args.timeout, timers=timers, **kw)

    for timers in args.timers:
        concs = args.concurrency if timers == headline else args.variant_concurrency
        for c in concs:
            if not args.no_direct:
                cells.append(cell("direct", "sse", "fast", c, timers))
            if args.bare and timers == headline:
                cells.append(cell("bare", "sse", "fast", c, timers))
            if args.floors and timers == headline:
                cells += [cell(floor, "sse", "fast", c, timers) for floor in FLOORS]
            for mode in modes:
                for dep in args.deployments:
                    cells.append(cell("gateway", mode, dep, c, timers))
    cells += _comparison_cells(args, cell)
    if "json" in args.modes and args.json_concurrency > 0:
        c = args.json_concurrency
        if not args.no_direct:
            cells.append(cell("direct", "json", "fast", c, headline))
        if args.floors:
            cells += [cell(floor, "json", "fast", c, headline) for floor in FLOORS]
        for dep in args.deployments:
            cells.append(cell("gateway", "json", dep, c, headline))
    if EMBEDDINGS in args.modes and args.json_concurrency > 0:
        c = args.json_concurrency
        if not args.no_direct:
            cells.append(cell("direct", EMBEDDINGS, EMBED, c, headline))
        cells.append(cell("gateway", EMBEDDINGS, EMBED, c, headline))
    return cells


def _comparison_cells(args: argparse.Namespace, cell: Any) -> list[Cell]:
    """Issue 15's cells: ``--resilience`` (plain vs resilient, plain vs one retry) and ``--h2``."""
    headline = args.timers[0]
    cells: list[Cell] = []

    def pairs(group: str, other: str, concurrencies: list[int]) -> None:
        for c in concurrencies:
            for r in range(1, args.resilience_rounds + 1):
                # Back to back, in A B B A order: a drift of the machine (the other work on it, the
                # gateway's heap) weighs on both alike instead of on whichever ran later.
                order = ("fast", other) if r % 2 else (other, "fast")
                cells.extend(cell("gateway", "sse", dep, c, headline, group=group, round=r) for dep in order)

    if args.floor_rounds and args.bare:
        # The per-chunk targets are ratios (the gateway against the bare relay, WebSocket against SSE):
        # the cells of one ratio run back to back, the order turned every other round, so that the
        # machine's drift over the minutes between the headline cells weighs on both sides alike.
        streams = [("bare", "sse"), ("gateway", "sse")] + ([("gateway", "ws")] if "ws" in args.modes else [])
        for c in args.floor_concurrency:
            for r in range(1, args.floor_rounds + 1):
                order = streams if r % 2 else streams[::-1]
                cells.extend(
                    cell(target, mode, "fast", c, headline, group=FLOOR_GROUP, round=r) for target, mode in order
                )
    adapters = [mode for mode in ADAPTER_BASES if mode in args.modes]
    if args.adapter_rounds and adapters:
        # The adapters' target is their CPU against chat completions' on the same transport: each API's
        # cells and their base run back to back, the order turned every other round, as the floor's do.
        streams: list[str] = []
        for base in ("sse", "ws"):
            on_base = [mode for mode in adapters if ADAPTER_BASES[mode] == base]
            if on_base:
                streams += [base, *on_base]
        for c in args.adapter_concurrency:
            for r in range(1, args.adapter_rounds + 1):
                order = streams if r % 2 else streams[::-1]
                cells.extend(cell("gateway", mode, "fast", c, headline, group=ADAPTER_GROUP, round=r) for mode in order)
    if args.resilience:
        pairs("resilience", RESILIENT, args.resilience_concurrency)
        pairs("retry", RETRY, args.retry_concurrency)
    if args.h2:
        for c in args.h2_concurrency:
            if not args.no_direct:
                cells.append(cell("direct", "sse", "fast", c, headline, upstream="h2", group="h2"))
            cells.append(cell("gateway", "sse", H2, c, headline, upstream="h2", group="h2"))
    return cells


# ---------------------------------------------------------------------------------------------
# running


class Matrix:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children = Children()
        self.tmp = Path(tempfile.mkdtemp(prefix="loadtests-"))
        # One fake upstream per timing variant, the headline (first of --timers) first; "h2": the TLS
        # one (headline timers) for --h2, its CA written where the gateway's SSL_CERT_FILE points.
        keys = [*args.timers, *(["h2"] if args.h2 else [])]
        self.upstreams: dict[str, asyncio.subprocess.Process | None] = {k: None for k in keys}
        self.upstream_ports: dict[str, int] = {k: 0 for k in keys}
        self.ca_file: str | None = str(self.tmp / "upstream-ca.pem") if args.h2 else None
        self.failing: asyncio.subprocess.Process | None = None  # --resilience: the provider failing at once
        self.failing_port = 0
        self.bare: asyncio.subprocess.Process | None = None  # --bare: the bare uvloop relay
        self.bare_url = ""
        self.floors: dict[str, tuple[asyncio.subprocess.Process, str]] = {}  # --floors: target -> (process, url)
        self.gateway: asyncio.subprocess.Process | None = None
        self.gateway_port = 0
        self.gateway_workers = 1  # --workers-cell runs its gateway with several (their CPU is not read)
        self.startup_s: float | None = None
        self.startups: list[float] = []
        self.startup_workers: list[int] = []  # each start-up's worker count, for the report
        self.restarts = 0
        self.gateway_log = self.tmp / "gateway.log"
        self.cells: list[Cell] = []
        self.idle: list[dict[str, Any]] = []
        self.warmup_errors: list[str] = []
        self.nofile = (0, 0)
        self.started_at = _dt.datetime.now(_dt.UTC)
        self.problems: list[str] = []

    def _log(self, name: str) -> Any:
        """A log file for a child's output; it stays open as long as the runner (the child writes to it)."""
        return open(self.tmp / name, "wb")

    @property
    def headline(self) -> str:
        return str(self.args.timers[0])

    @property
    def upstream(self) -> asyncio.subprocess.Process | None:
        return self.upstreams[self.headline]

    @property
    def upstream_url(self) -> str:
        return self.upstream_url_for(self.headline)

    def upstream_url_for(self, key: str) -> str:
        scheme = "https" if key == "h2" else "http"
        return f"{scheme}://127.0.0.1:{self.upstream_ports[key]}"

    def toml(self) -> str:
        timed = {t: self.upstream_ports[t] for t in self.args.timers}
        failing = self.failing_port if self.args.resilience else None
        a = self.args
        full_path = "full" in a.deployments or (a.idle > 0 and "slow_full" in a.idle_models)
        return gateway_toml(
            self.gateway_port, timed, failing_port=failing, h2_port=self.upstream_ports.get("h2"), full_path=full_path
        )

    def child_env(self) -> dict[str, str]:
        """The environment of the gateway and loadgen: with --h2, they trust the TLS upstream's CA."""
        env = dict(os.environ)
        if self.ca_file:
            env["SSL_CERT_FILE"] = self.ca_file
        return env

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    async def start_upstream(self, key: str) -> None:
        a = self.args
        name = f"upstream-{key}.log"
        # A restarted upstream takes the same port, so the gateway's configuration stays valid.
        port = str(self.upstream_ports[key])
        timers = self.headline if key == "h2" else key
        argv = [PY, "-m", "loadtests.upstream", "--port", port, "--first-ms", str(a.first_ms), "--timers", timers]
        argv += ["--gap-ms", str(a.gap_ms), "--chunks", str(a.chunks), "--max-seconds", str(a.max_minutes * 60 + 60)]
        if key == "h2":
            assert self.ca_file is not None
            argv += ["--tls", "--ca-file", self.ca_file]  # a restart writes a new CA: the gateway's next TLS
            # connection would fail to verify it, and the cell's errors say so
        proc, self.upstream_ports[key] = await self._spawn_ready(argv, name, "upstream")
        self.upstreams[key] = proc
        print(f"upstream ({key}): pid {proc.pid}, port {self.upstream_ports[key]}", flush=True)

    async def _spawn_ready(self, argv: list[str], name: str, what: str) -> tuple[asyncio.subprocess.Process, int]:
        """Start a child that prints ``READY <port>`` once it listens; its stderr goes to the log ``name``."""
        proc = await self.children.spawn(
            argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=self._log(name), stdin=asyncio.subprocess.DEVNULL
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
        except TimeoutError as exc:
            raise RuntimeError(f"{what} did not print READY in 15 s\n{tail(self.tmp / name)}") from exc
        if not line.startswith(b"READY "):
            raise RuntimeError(f"{what} failed: {line!r}\n{tail(self.tmp / name)}")
        return proc, int(line.split()[1])

    async def start_bare(self) -> None:
        """``--bare``: the floor, a bare uvloop TCP relay (``loadtests.bare_relay``) to the headline upstream."""
        argv = [PY, "-m", "loadtests.bare_relay", "--upstream-port", str(self.upstream_ports[self.headline])]
        proc, port = await self._spawn_ready(argv, "bare-relay.log", "the bare relay")
        self.bare, self.bare_url = proc, f"http://127.0.0.1:{port}"
        print(f"bare relay: pid {proc.pid}, {self.bare_url}", flush=True)

    async def start_floors(self) -> None:
        """``--floors``: the two floors under the gateway, on the headline upstream (FLOORS)."""
        upstream = f"http://127.0.0.1:{self.upstream_ports[self.headline]}"
        for target, module in FLOORS.items():
            # Stopped with the matrix's other children; their own time limit only has to outlast the run.
            argv = [PY, "-m", module, "--port", "0", "--upstream", upstream, "--max-seconds", "86400"]
            proc, port = await self._spawn_ready(argv, f"{target}.log", module)
            self.floors[target] = (proc, f"http://127.0.0.1:{port}")
            print(f"{module}: pid {proc.pid}, {self.floors[target][1]}", flush=True)

    async def start_failing(self) -> None:
        """The provider of ``resilience_bench`` that answers 500 at once, for the ``retry`` group."""
        self.failing_port = free_port()
        self.failing = await self.children.spawn(
            failing_provider_argv(self.failing_port),
            cwd=ROOT,
            stdout=self._log("failing.log"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.failing_port), 1.0)
                writer.close()
                break
            if self.failing.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the failing provider did not listen within 15 s\n{tail(self.tmp / 'failing.log')}")
            await asyncio.sleep(0.05)
        print(f"failing provider: pid {self.failing.pid}, port {self.failing_port}", flush=True)

    async def start_gateway(self, workers: int = 1) -> None:
        self.gateway_port = free_port()
        self.gateway_workers = workers
        config = self.tmp / "gateway.toml"
        config.write_text(self.toml())
        env = {k: v for k, v in self.child_env().items() if not (k.startswith("CHAT_") and "__" in k)}
        env["CHAT_CONFIG"] = str(config)
        env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        for item in self.args.gateway_env:
            k, _, v = item.partition("=")
            env[k] = v
        if workers > 1:
            env["CHAT_SERVER__WORKERS"] = str(workers)
        self.gateway_log = self.tmp / f"gateway-{len(self.startups) + 1}.log"
        log = self._log(self.gateway_log.name)
        t0 = time.perf_counter()
        self.gateway = await self.children.spawn(
            [PY, "-m", "app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = t0 + self.args.startup_timeout
        while True:
            if self.gateway.returncode is not None:
                raise RuntimeError(
                    f"gateway exited with {self.gateway.returncode} during start-up:\n{tail(self.gateway_log)}"
                )
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, _ = await http_get(self.gateway_url + "/health/ready", 1.0)
                if status == 200:
                    break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"gateway not ready after {self.args.startup_timeout} s:\n{tail(self.gateway_log)}")
            await asyncio.sleep(0.05)
        startup = time.perf_counter() - t0
        self.startups.append(startup)
        self.startup_workers.append(workers)
        if self.startup_s is None:
            self.startup_s = startup
        print(f"gateway: pid {self.gateway.pid}, port {self.gateway_port}, ready in {startup:.2f} s", flush=True)

    async def restart_gateway(self, workers: int = 1) -> None:
        if self.gateway is not None:
            await self.children.stop(self.gateway)
        await self.start_gateway(workers)

    def upstream_alive(self, key: str) -> bool:
        proc = self.upstreams[key]
        return proc is not None and proc.returncode is None

    async def ensure_upstream(self, key: str, before: str) -> bool:
        """Restart an upstream that died (same port; shares the restart budget), noting it."""
        if self.upstream_alive(key):
            return True
        dead = _exit(self.upstreams[key])
        self.problems.append(f"the {key} upstream was found dead ({dead}) before {before}")
        print(f"upstream ({key}) died ({dead}) before {before}", flush=True)
        if self.restarts >= self.args.max_restarts:
            return False
        self.restarts += 1
        try:
            await self.start_upstream(key)
        except RuntimeError as exc:
            self.problems.append(f"restarting the upstream failed: {exc}")
            return False
        self.problems.append(f"restarted the upstream (restart {self.restarts} of at most {self.args.max_restarts})")
        return True

    def gateway_alive(self) -> bool:
        return self.gateway is not None and self.gateway.returncode is None

    def gateway_exit(self) -> str:
        return _exit(self.gateway)

    async def ensure_gateway(self, before: str) -> bool:
        """Restart a gateway that died (at most --max-restarts times), noting it in the report."""
        if self.gateway_alive():
            return True
        log = tail(self.gateway_log, 8)
        self.problems.append(f"the gateway was found dead ({self.gateway_exit()}) before {before}; log tail:\n{log}")
        print(f"gateway died ({self.gateway_exit()}) before {before}", flush=True)
        if self.restarts >= self.args.max_restarts:
            return False
        self.restarts += 1
        try:
            await self.restart_gateway()
        except RuntimeError as exc:
            self.problems.append(f"restarting the gateway failed: {exc}")
            return False
        self.problems.append(f"restarted the gateway (restart {self.restarts} of at most {self.args.max_restarts})")
        if not self.args.no_warmup:
            await self.warmup()
        return self.gateway_alive()

    async def upstream_stats(self, key: str | None = None, reset: bool = False) -> dict[str, Any] | None:
        """The upstream's /stats; a reset also restarts its phase sequence, so every cell gets the same phases."""
        url = self.upstream_url_for(key or self.headline)
        try:
            status, body = await http_get(url + ("/stats?reset=1" if reset else "/stats"), 2.0, self.ca_file)
            return json.loads(body) if status == 200 else None
        except (OSError, TimeoutError, ValueError, IndexError):
            return None

    async def loadgen(self, argv: list[str], bound: float) -> dict[str, Any]:
        proc = await self.children.spawn(
            [PY, "-m", "loadtests.loadgen", *argv],
            cwd=ROOT,
            env=self.child_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), bound)
        except TimeoutError:
            await self.children.stop(proc, grace=2)
            return {"failed": f"loadgen overran its {bound:.0f} s bound and was killed"}
        finally:
            if proc.returncode is not None and proc in self.children.procs:
                self.children.procs.remove(proc)
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("{"):
                return dict(json.loads(line))
        return {"failed": f"loadgen exited {proc.returncode}: {err.decode(errors='replace')[-1500:]}"}

    def _common(self, url: str, mode: str, model: str, key: str | None = None) -> list[str]:
        # The Responses and Messages cells run through those APIs; their baseline is direct SSE.
        if mode in API_MODES:
            api, wire = API_MODES[mode]
            argv = ["--url", url, "--mode", wire, "--api", api]
        else:
            argv = ["--url", url, "--mode", mode]
        if mode == EMBEDDINGS:
            argv = ["--url", url, "--mode", "json", "--api", EMBEDDINGS]
        argv += ["--model", model]
        upstream = self.upstreams[key or self.headline]
        if upstream is not None:
            argv += ["--upstream-pid", str(upstream.pid)]
        if url == self.gateway_url and self.gateway is not None and self.gateway_workers == 1:
            argv += ["--pid", str(self.gateway.pid)]
        elif url == self.bare_url and self.bare is not None:
            argv += ["--pid", str(self.bare.pid)]
        else:
            pids = [proc.pid for proc, floor_url in self.floors.values() if url == floor_url]
            argv += ["--pid", str(pids[0])] if pids else []
        return argv

    def ramp_s(self) -> float:
        a = self.args
        if a.ramp is not None:
            return float(a.ramp)
        return (a.first_ms + (a.chunks - 1) * a.gap_ms) / 1000  # users start over one stream's length

    async def run_cell(self, cell: Cell) -> None:
        targets = {"direct": self.upstream_url_for(cell.up_key), "bare": self.bare_url}
        targets.update({target: url for target, (_, url) in self.floors.items()})
        url = targets.get(cell.target, self.gateway_url)
        argv = self._common(url, cell.mode, cell.model, cell.up_key)
        argv += ["--concurrency", str(cell.concurrency), "--requests", str(cell.requests)]
        argv += ["--duration", str(cell.duration), "--timeout", str(cell.timeout), "--label", cell.name]
        argv += ["--drain", str(self.args.drain), "--ramp", str(self.ramp_s())]
        # One unmeasured round first, as a plain loadgen run does by default: a cell's figures are
        # the steady state's, whatever ran before it (a fresh gateway, or the full path's cells).
        argv += ["--warmup", str(cell.concurrency if self.args.cell_warmup else 0)]
        before = await self.upstream_stats(cell.up_key, reset=True)
        bound = 2 * (cell.duration + min(self.args.drain, cell.timeout)) + 40  # the warm-up round is bounded alike
        summary = await self.loadgen(argv, bound)
        stats = await self.upstream_stats(cell.up_key)
        cell.upstream_peak = stats.get("peak_streams") if stats else None
        if before and stats:
            # What the upstream saw in this cell, over what: proof that the h2 cells relayed over h2.
            for k in ("h2_requests", "h2_connections", "tls_connections"):
                cell.extra[k] = stats.get(k, 0) - before.get(k, 0)
            cell.extra["h2_connections_total"] = stats.get("h2_connections", 0)
        if cell.group == "retry" and self.failing is not None and self.failing.returncode is not None:
            # Refused connections fail at once too, so the cell still measures a retry; say so all the same.
            self.problems.append(f"{cell.name}: the failing provider was not running ({_exit(self.failing)})")
        cell.summary = summary
        if cell.target == "gateway" and not self.gateway_alive():
            cell.note = f"the gateway died during this cell ({self.gateway_exit()})"
        if not self.upstream_alive(cell.up_key):
            dead = _exit(self.upstreams[cell.up_key])
            cell.note += f"{'; ' if cell.note else ''}the upstream died during this cell ({dead})"

    async def warmup(self) -> None:
        for dep in self.args.deployments:
            for mode in ("sse", "ws", "json"):
                argv = self._common(self.gateway_url, mode, dep)
                argv += ["--concurrency", "4", "--requests", "12", "--duration", "10", "--timeout", "10"]
                s = await self.loadgen(argv, 40)
                if s.get("failed") or s.get("errors"):
                    what = s.get("failed") or s.get("error_kinds")
                    msg = f"warm-up {mode} {dep}: {what} {s.get('error_samples', '')}"
                    self.warmup_errors.append(msg)
                    print(msg, flush=True)

    async def run_workers_cells(self) -> None:
        """``--workers-cell C``: direct and gateway SSE at concurrency C, the gateway with
        ``--workers`` worker processes behind its one port (then back to one worker)."""
        a = self.args
        c, workers = a.workers_cell, a.workers
        n = max(a.min_requests, c * a.requests_factor)
        plan = [
            Cell("direct", "sse", "fast", c, n, a.duration, a.timeout, group="workers"),
            Cell("gateway", "sse", "fast", c, n, a.duration, a.timeout, group="workers", extra={"workers": workers}),
        ]
        try:
            await self.restart_gateway(workers)
            for cell in plan:
                await self.run_cell(cell)
                self.cells.append(cell)
                s = cell.summary or {}
                print(f"[workers] {cell.name}: {s.get('failed') or _short(s)}", flush=True)
        except RuntimeError as exc:
            self.problems.append(f"the {workers}-worker cell: {exc}")
        finally:
            await self.restart_gateway()

    async def run_idle(self, model: str, n: int) -> None:
        """On a fresh gateway (a heap full of freed memory would hide what streams cost), warmed up."""
        if not await self.ensure_upstream(self.headline, f"idle {model}"):
            self.idle.append({"failed": "upstream not running", "model": model, "requested": n})
            return
        try:
            await self.restart_gateway()
        except RuntimeError as exc:
            self.idle.append({"failed": str(exc), "model": model, "requested": n})
            return
        warm = "full" if model.endswith("_full") else "fast"
        argv = self._common(self.gateway_url, "sse", warm)
        argv += ["--concurrency", "4", "--requests", "12", "--duration", "10", "--timeout", "10"]
        await self.loadgen(argv, 40)
        # Nothing may still be streaming from the previous cell.
        for _ in range(40):
            st = await self.upstream_stats()
            if not st or st.get("active_streams", 0) == 0:
                break
            await asyncio.sleep(0.25)
        argv = self._common(self.gateway_url, "sse", model)
        argv += ["--idle", str(n), "--timeout", str(self.args.idle_timeout), "--upstream-url", self.upstream_url]
        argv += ["--label", f"idle {model}"]
        s = await self.loadgen(argv, self.args.idle_timeout + 60)
        s.setdefault("model", model)
        s.setdefault("requested", n)
        self.idle.append(s)

    async def run(self) -> None:
        a = self.args
        self.nofile = raise_nofile_limit()
        print(f"RLIMIT_NOFILE soft/hard: {self.nofile[0]}/{self.nofile[1]} (children inherit it)", flush=True)
        for key in self.upstreams:
            await self.start_upstream(key)
        if a.resilience:
            await self.start_failing()
        if a.bare:
            await self.start_bare()
        if a.floors:
            await self.start_floors()
        await self.start_gateway()
        if not a.no_warmup:
            await self.warmup()
        plan = build_plan(a)
        total = len(plan) + (len(a.idle_models) if a.idle > 0 else 0)
        for i, cell in enumerate(plan, 1):
            for attempt in (1, 2):
                if not await self.ensure_upstream(cell.up_key, cell.name):
                    cell.summary = {"failed": "upstream not running"}
                    break
                if cell.target == "gateway" and not await self.ensure_gateway(cell.name):
                    cell.summary = {"failed": "gateway not running"}
                    break
                await self.run_cell(cell)
                if not cell.note or attempt == 2 or self.restarts >= a.max_restarts:
                    break
                # A process was killed under the cell: its numbers mean nothing; run it once more.
                self.problems.append(f"{cell.name}: {cell.note}; the cell was run again")
                cell.note = ""
            self.cells.append(cell)
            s = cell.summary or {}
            line = s.get("failed") or _short(s)
            print(f"[{i}/{total}] {cell.name}: {line}", flush=True)
            await asyncio.sleep(a.pause)
        if not self.gateway_alive():
            self.problems.append(f"the gateway died during the cells ({self.gateway_exit()})")
        if a.workers_cell:
            await self.run_workers_cells()
        if a.idle > 0:
            for j, model in enumerate(a.idle_models, len(plan) + 1):
                await self.run_idle(model, a.idle)
                s = self.idle[-1]
                print(f"[{j}/{total}] idle {model} x{a.idle}: {s.get('failed') or _short_idle(s)}", flush=True)
        if not self.gateway_alive():
            self.problems.append(f"the gateway died during the idle test ({self.gateway_exit()})")


def _exit(proc: asyncio.subprocess.Process | None) -> str:
    rc = proc.returncode if proc is not None else None
    if proc is None or rc is None:
        return "running"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}, not sent by this runner"
    return f"exit status {rc}"


def _short(s: dict[str, Any]) -> str:
    t = s.get("ttfb_ms", {})
    return (
        f"{s.get('ok')}/{s.get('requests')} ok, {s.get('errors')} errors {s.get('error_kinds') or ''}, "
        f"{s.get('cut', 0)} cut, "
        f"{s.get('req_per_s')} req/s, {s.get('chunks_per_s')} chunks/s, TTFB p50/p99 {t.get('p50')}/{t.get('p99')} ms"
    )


def _short_idle(s: dict[str, Any]) -> str:
    return (
        f"{s.get('opened')}/{s.get('requested')} open in {s.get('open_s')} s, RSS {s.get('base_rss_mb')} -> "
        f"{s.get('open_rss_mb')} MB = {s.get('rss_kb_per_stream')} KB/stream, upstream active "
        f"{s.get('upstream_active_open')}, errors {s.get('errors')} {s.get('error_kinds') or ''}"
    )


# ---------------------------------------------------------------------------------------------
# report


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _triple(d: dict[str, Any] | None, nd: int = 1) -> str:
    if not d:
        return "-"
    return " / ".join(_fmt(d.get(k), nd) for k in ("p50", "p95", "p99"))


def _minus(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b:
        return "-"
    out = []
    for k in ("p50", "p95", "p99"):
        x, y = a.get(k), b.get(k)
        out.append("-" if x is None or y is None else f"{x - y:+.1f}")
    return " / ".join(out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def _cell_rows(c: Cell, s: dict[str, Any], direct: dict[tuple[str, str, int], dict[str, Any]]) -> tuple[str, str]:
    """The latency row and the throughput/resources row of one cell (after the key columns)."""
    is_json = c.mode in ("json", EMBEDDINGS)
    base_mode = c.mode if is_json else "sse"
    base = direct.get((c.up_key, base_mode, c.concurrency)) if c.target != "direct" else None
    ratio = "-"
    if base:
        metric = "req_per_s" if is_json else "chunks_per_s"
        num, den = s.get(metric), base.get(metric)
        if num is not None and den:
            ratio = f"{num / den:.2f}"
    gw = s.get("server") or {}
    up = s.get("upstream") or {}
    unit = " ms/req" if is_json else ""
    gw_cpu = gw.get("cpu_ms_per_request") if is_json else gw.get("cpu_s_per_1k_chunks")
    up_cpu = up.get("cpu_ms_per_request") if is_json else up.get("cpu_s_per_1k_chunks")
    errors = s.get("errors", 0)
    err_cell = str(errors) if not errors else f"**{errors}**"
    ok = f"{s.get('ok')} / {s.get('requests')}"
    lat = [
        _triple(s.get("ttfb_ms")),
        _minus(s.get("ttfb_ms"), base.get("ttfb_ms")) if base else "-",
        "-" if is_json else _fmt((s.get("gap_ms") or {}).get("p99")),
        "-" if is_json else _fmt((s.get("tail_ms") or {}).get("p99")),
        _fmt((s.get("total_ms") or {}).get("p50"), 0),
        _fmt((s.get("connect_ms") or {}).get("p99")),
        ok,
        err_cell,
    ]
    res = [
        ok,
        err_cell,
        str(s.get("cut", 0)),
        _fmt(s.get("req_per_s")),
        "-" if is_json else _fmt(s.get("chunks_per_s"), 0),
        ratio,
        "-" if gw_cpu is None else _fmt(gw_cpu, 1 if is_json else 3) + unit,
        "-" if is_json else _fmt(gw.get("wakeups_per_1k_chunks")),
        _pct(gw.get("cpu_util")),
        _fmt(gw.get("rss_mb_max"), 0),
        "-" if up_cpu is None else _fmt(up_cpu, 2 if is_json else 4) + unit,
        _pct(up.get("cpu_util")),
        _fmt(c.upstream_peak),
        _pct((s.get("loadgen") or {}).get("cpu_util")),
        _pct((s.get("host") or {}).get("others_cores")),
    ]
    return " " + " | ".join(lat) + " |", " " + " | ".join(res) + " |"


def _summaries(m: Matrix, group: str | None, model: str, conc: int) -> list[Cell]:
    """The cells of ``group`` (None: any) for gateway SSE ``model`` at ``conc`` that did not fail, in run order."""
    return [
        c
        for c in m.cells
        if (group is None or c.group == group)
        and c.target == "gateway"
        and c.mode == "sse"
        and c.model == model
        and c.concurrency == conc
        and c.measured
    ]


def _measured_in(m: Matrix, group: str) -> list[Cell]:
    """The cells of ``group`` that ran and did not fail, in run order."""
    return [c for c in m.cells if c.group == group and c.measured]


def _median_of(cells: list[Cell], get: Any) -> float | None:
    values = [v for v in (get(c.summary or {}) for c in cells) if v is not None]
    return statistics.median(values) if values else None


def _chunks_per_s(s: dict[str, Any]) -> float | None:
    return s.get("chunks_per_s")


def _cpu_per_1k(s: dict[str, Any]) -> float | None:
    return (s.get("server") or {}).get("cpu_s_per_1k_chunks")


def _ttfb(p: str) -> Any:
    return lambda s: (s.get("ttfb_ms") or {}).get(p)


def _change(new: float | None, old: float | None) -> str:
    """new against old, as a percentage difference."""
    return "-" if new is None or not old else f"{(new / old - 1) * 100:+.1f}%"


def _errors(cells: list[Cell]) -> int:
    return sum(int((c.summary or {}).get("errors", 0)) for c in cells)


def _table_head(intro: str, header: str, align: str) -> list[str]:
    return ["", intro, "", header, align]


def _floor_lines(m: Matrix) -> list[str]:
    """``--floor-rounds``: the gateway's CPU per chunk against the bare relay's and WebSocket's against
    SSE's, each ratio taken within a round (cells back to back) and the median over the rounds."""
    cells = _measured_in(m, FLOOR_GROUP)
    if not cells:
        return []
    lines = _table_head(
        "The bare relay, gateway SSE and gateway WebSocket cells on `fast` back to back in each round (the order "
        "turned every other round, so that a drift of the machine weighs on all alike); CPU seconds per 1000 "
        "content chunks, medians over the rounds. *gw / bare* and *WS / SSE*: the ratio within each round, "
        "then their median (targets: <= 3x and within 10%).",
        "| conc | rounds | bare CPU/1k | gw SSE CPU/1k | gw / bare | by round | gw WS CPU/1k | WS / SSE | by round "
        "| errors |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---|---:|",
    )

    def cpu(target: str, mode: str, conc: int) -> float | None:
        return _median_in(cells, _cpu_per_1k, (target, mode), conc)

    def ratios(num: tuple[str, str], den: tuple[str, str], conc: int, rounds: list[int]) -> list[float]:
        return [a / b for a, b in _by_round(cells, _cpu_per_1k, num, den, conc, rounds) if b]

    for conc in sorted({c.concurrency for c in cells}):
        rounds = sorted({c.round for c in cells if c.concurrency == conc})
        floor = ratios(("gateway", "sse"), ("bare", "sse"), conc, rounds)
        ws = ratios(("gateway", "ws"), ("gateway", "sse"), conc, rounds)
        lines.append(
            f"| {conc} | {len(rounds)} | {_fmt(cpu('bare', 'sse', conc), 3)} | "
            f"{_fmt(cpu('gateway', 'sse', conc), 3)} | "
            f"{_ratio(floor)} | {_rounds(floor)} | {_fmt(cpu('gateway', 'ws', conc), 3)} | {_ratio(ws)} | "
            f"{_rounds(ws)} | {_errors([c for c in cells if c.concurrency == conc])} |"
        )
    return ["", "## The gateway against the bare relay, in rounds (issue 29)", *lines]


def _median_in(cells: list[Cell], get: Any, kind: tuple[str, str], conc: int, r: int | None = None) -> float | None:
    """The median of ``get`` over the cells of ``kind`` (target, mode) at ``conc``: of round ``r``, or
    (None) of every round."""
    return _median_of(
        [c for c in cells if (c.target, c.mode, c.concurrency) == (*kind, conc) and (r is None or c.round == r)], get
    )


def _by_round(
    cells: list[Cell], get: Any, num: tuple[str, str], den: tuple[str, str], conc: int, rounds: list[int]
) -> list[tuple[float, float]]:
    """``get`` of ``num``'s cells and of ``den``'s within each round (cells back to back), for the rounds
    that have both: what a comparison in rounds takes its ratio or difference from."""
    pairs = [(_median_in(cells, get, num, conc, r), _median_in(cells, get, den, conc, r)) for r in rounds]
    return [(a, b) for a, b in pairs if a is not None and b is not None]


def _ratio(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x" if ratios else "-"


def _rounds(ratios: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in ratios) or "-"


def _adapter_lines(m: Matrix) -> list[str]:
    """``--adapter-rounds``: each client API's CPU per chunk and time to first byte against chat
    completions' on the same transport, each taken within a round (cells back to back), and the
    median over the rounds."""
    cells = _measured_in(m, ADAPTER_GROUP)
    if not cells:
        return []
    lines = _table_head(
        "Chat completions' and each client API's gateway cells on `fast` back to back in each round (the order "
        "turned every other round, so that a drift of the machine weighs on all alike); CPU seconds per 1000 "
        "content chunks and TTFB p50, medians over the rounds. *change*: the API's CPU against chat "
        "completions' on the same transport within each round, then their median (target: within 15%); "
        "*+TTFB*: the API's TTFB p50 minus chat completions' within each round, median (target: within 1 ms).",
        "| conc | rounds | API | chat CPU/1k | API CPU/1k | change | by round | +TTFB p50 ms | errors |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|",
    )

    for conc in sorted({c.concurrency for c in cells}):
        rounds = sorted({c.round for c in cells if c.concurrency == conc})
        for mode, base in ADAPTER_BASES.items():
            if not any(c.mode == mode and c.concurrency == conc for c in cells):
                continue
            api_kind, chat_kind = ("gateway", mode), ("gateway", base)
            cpu = _by_round(cells, _cpu_per_1k, api_kind, chat_kind, conc, rounds)
            changes = [(a / b - 1) * 100 for a, b in cpu if b]
            ttfb = _by_round(cells, _ttfb("p50"), api_kind, chat_kind, conc, rounds)
            added = [a - b for a, b in ttfb]
            api, transport = API_MODES[mode]
            lines.append(
                f"| {conc} | {len(rounds)} | {api} {transport.upper() if transport == 'sse' else 'WebSocket'} | "
                f"{_fmt(_median_in(cells, _cpu_per_1k, chat_kind, conc), 3)} | "
                f"{_fmt(_median_in(cells, _cpu_per_1k, api_kind, conc), 3)} | "
                f"{f'{statistics.median(changes):+.1f}%' if changes else '-'} | "
                f"{', '.join(f'{x:+.1f}%' for x in changes) or '-'} | "
                f"{f'{statistics.median(added):+.2f}' if added else '-'} | "
                f"{_errors([c for c in cells if c.concurrency == conc and c.mode in (mode, base)])} |"
            )
    return ["", "## The client APIs against chat completions, in rounds (issue 29)", *lines]


def _comparison_lines(m: Matrix) -> list[str]:
    """Issue 15's comparisons (``--resilience``, ``--h2``), each from cells of this run."""
    lines: list[str] = []
    cells = [c for c in m.cells if c.group in ISSUE_15_GROUPS]
    if not cells:
        return lines
    lines += ["", "## Resilience and HTTP/2 (issue 15)"]
    concs = sorted({c.concurrency for c in cells if c.group == "resilience"})
    if concs:
        lines += _table_head(
            f"`fast` against `{RESILIENT}` (the same upstream model with `num_retries = 1` and "
            '`fallbacks = ["fast"]`), gateway SSE, the two run back to back in each round (A B B A order, '
            "so that a drift of the machine weighs on both alike). Medians over the rounds; *change* = "
            f"`{RESILIENT}` against `fast` (target: within 5% for CPU per 1000 chunks and chunks/s).",
            "| conc | rounds | chunks/s fast / resilient | change chunks/s | gw CPU/1k fast / resilient "
            "| change CPU/1k | change CPU/1k by round | errors fast / resilient |",
            "|---:|---:|---|---:|---|---:|---|---|",
        )
        for conc in concs:
            plain, res = _summaries(m, "resilience", "fast", conc), _summaries(m, "resilience", RESILIENT, conc)
            cps = _median_of(plain, _chunks_per_s), _median_of(res, _chunks_per_s)
            cpu = _median_of(plain, _cpu_per_1k), _median_of(res, _cpu_per_1k)
            by_round = []
            for r in sorted({c.round for c in plain} & {c.round for c in res}):
                a = _median_of([c for c in plain if c.round == r], _cpu_per_1k)
                b = _median_of([c for c in res if c.round == r], _cpu_per_1k)
                by_round.append(_change(b, a))
            lines.append(
                f"| {conc} | {min(len(plain), len(res))} | {_fmt(cps[0], 0)} / {_fmt(cps[1], 0)} | "
                f"{_change(cps[1], cps[0])} | {_fmt(cpu[0], 3)} / {_fmt(cpu[1], 3)} | {_change(cpu[1], cpu[0])} | "
                f"{', '.join(by_round) or '-'} | {_errors(plain)} / {_errors(res)} |"
            )
    concs = sorted({c.concurrency for c in cells if c.group == "retry"})
    if concs:
        lines += _table_head(
            f"The added TTFB of one retry: `{RETRY}` is a group of a provider that answers 500 at once "
            "(weight 10000) and the upstream (weight 0.0001) with `num_retries = 1`, so practically every "
            "call fails once and is retried on the upstream; `fast` is the upstream alone, run back to back "
            "with it. Milliseconds, medians over the rounds of each cell's percentile.",
            "| conc | rounds | TTFB p50 / p99 fast | TTFB p50 / p99 retry | added p50 / p99 | errors fast / retry |",
            "|---:|---:|---|---|---|---|",
        )
        for conc in concs:
            plain, retry = _summaries(m, "retry", "fast", conc), _summaries(m, "retry", RETRY, conc)
            p50 = _median_of(plain, _ttfb("p50")), _median_of(retry, _ttfb("p50"))
            p99 = _median_of(plain, _ttfb("p99")), _median_of(retry, _ttfb("p99"))
            added = [None if a is None or b is None else b - a for a, b in (p50, p99)]
            lines.append(
                f"| {conc} | {min(len(plain), len(retry))} | {_fmt(p50[0])} / {_fmt(p99[0])} | "
                f"{_fmt(p50[1])} / {_fmt(p99[1])} | "
                + " / ".join("-" if x is None else f"{x:+.1f}" for x in added)
                + f" | {_errors(plain)} / {_errors(retry)} |"
            )
    h2_cells = [c for c in cells if c.group == "h2"]
    if h2_cells:
        lines += _table_head(
            f"`{H2}`: the upstream's `fast` model on a second upstream process serving TLS (a throwaway CA, "
            "the gateway's `SSL_CERT_FILE`) and HTTP/2 when ALPN picks h2, which the relay's client offers. "
            "The load generator speaks HTTP/1.1 only, so the direct baseline is HTTP/1.1 over TLS to that "
            "same process. *fast CPU/1k*: the HTTP/1.1 relay's (`fast`, the median of this run's gateway "
            "SSE cells at that concurrency). *h2 calls*: the streams the upstream served over h2 during the "
            "cell (its warm-up round included) / the calls loadgen sent; *h2 connections*: opened during the "
            "cell / since the upstream started.",
            f"| conc | direct TLS chunks/s | {H2} chunks/s | x direct | gw CPU/1k {H2} | gw CPU/1k fast "
            "| change CPU/1k | h2 calls / sent | h2 connections | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
        )
        for conc in sorted({c.concurrency for c in h2_cells}):
            relay = _summaries(m, "h2", H2, conc)
            direct = [c for c in h2_cells if c.target == "direct" and c.concurrency == conc and c.measured]
            h2_cps, base = _median_of(relay, _chunks_per_s), _median_of(direct, _chunks_per_s)
            h2_cpu = _median_of(relay, _cpu_per_1k)
            fast_cpu = _median_of(_summaries(m, None, "fast", conc), _cpu_per_1k)
            extra = relay[0].extra if relay else {}
            s = (relay[0].summary or {}) if relay else {}
            sent = s.get("requests", 0) + (s.get("warmup") or {}).get("requests", 0)
            lines.append(
                f"| {conc} | {_fmt(base, 0)} | {_fmt(h2_cps, 0)} | "
                f"{'-' if h2_cps is None or not base else f'{h2_cps / base:.2f}'} | {_fmt(h2_cpu, 3)} | "
                f"{_fmt(fast_cpu, 3)} | {_change(h2_cpu, fast_cpu)} | "
                f"{_fmt(extra.get('h2_requests'))} / {sent if relay else '-'} | "
                f"{_fmt(extra.get('h2_connections'))} / {_fmt(extra.get('h2_connections_total'))} | "
                f"{_errors(relay)} |"
            )
    return lines


def interpreter_build(executable: str, maps: str | None = None) -> str:
    """How the interpreter that runs the gateway was built, as far as it shows: the gateway's time is
    mostly its own Python, and an interpreter linked to a shared ``libpython`` without profile-guided
    optimisation (a plain ``pyenv install``) runs it measurably slower than a distribution's or the
    official image's build (loadtests/README.md). ``maps``: ``/proc/self/maps`` (this process runs
    ``executable``, as the gateway's children do)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            maps = ""
    shared = "libpython" in maps
    optimized = "--enable-optimizations" in str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    return (
        f"{executable}; libpython {'shared' if shared else 'linked in'}; "
        f"configured {'with' if optimized else 'without'} --enable-optimizations"
    )


def machine_info() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        nproc = str(len(os.sched_getaffinity(0)))
    commit = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
        r = subprocess.run(git, capture_output=True, text=True, timeout=5)
        commit = r.stdout.strip() or "?"
    versions = {}
    for pkg in ("litellm", "litestar", "uvicorn", "uvloop"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = "?"
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB"
    return {
        "nproc": nproc,
        "cpu": cpu,
        "memory": mem,
        "python": f"{platform.python_version()} ({interpreter_build(sys.executable)})",
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "git commit": commit,
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def _embeddings_lines(m: Matrix, direct: dict[tuple[str, str, int], dict[str, Any]]) -> list[str]:
    """The embeddings cells (issue 27): the gateway's added latency and its CPU per request."""
    rows = []
    for c in m.cells:
        s = c.summary or {}
        if c.mode != EMBEDDINGS or c.target != "gateway" or not s or s.get("failed"):
            continue
        base = direct.get((c.up_key, EMBEDDINGS, c.concurrency)) or {}
        total, base_total = (s.get("total_ms") or {}).get("p50"), (base.get("total_ms") or {}).get("p50")
        added = "-" if total is None or base_total is None else f"{total - base_total:+.2f}"
        cpu = (s.get("server") or {}).get("cpu_ms_per_request")
        rows.append(
            f"| {c.concurrency} | {_fmt(base_total, 2)} | {_fmt(total, 2)} | {added} | {_fmt(cpu, 2)} | "
            f"{_fmt(s.get('req_per_s'))} | {s.get('errors', 0)} |"
        )
    if not rows:
        return []
    return [
        *_table_head(
            "## Embeddings (issue 27)\n\n`POST /v1/embeddings` with one string input (`encoding_format: float`; "
            f"the upstream answers a {EMBED!r} vector of its default length after its `--embed-ms`), "
            "gateway against the upstream directly at the same concurrency; *added* = total p50 gateway minus direct.",
            "| conc | direct total p50 ms | gateway total p50 ms | added p50 ms | gw CPU ms/req | req/s | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ),
        *rows,
    ]


def _timers_lines(m: Matrix) -> list[str]:
    a = m.args
    lines = [
        f"- Timers (headline: `{m.headline}`): "
        + (
            "**per-stream timers**: every stream has its own timer and its own phase (its first chunk "
            f"{a.first_ms:g} ms + a phase in [0, {a.gap_ms:g}) ms after the request, spread evenly and the same "
            "set in every cell), so chunks of different streams reach the gateway at independent moments, as "
            "separate provider connections do."
            if m.headline == "stream"
            else "**the shared 1 ms wheel**: chunks of all streams due in the same millisecond go out together, "
            "so the gateway gets them in batches (cheaper per chunk than independent arrivals)."
        )
    ]
    for timers in a.timers[1:]:
        lines.append(
            f"- Variant `{timers}` timers: the same streaming cells against a second upstream "
            + (
                "on the shared 1 ms wheel (no phase): rows with timers = wheel, gateway deployments named "
                f"`*_{timers}`."
                if timers == "wheel"
                else f"with per-stream timers: rows with timers = stream, deployments named `*_{timers}`."
            )
        )
    return lines


def render(m: Matrix, machine: dict[str, str], wall_s: float) -> str:
    a = m.args
    direct: dict[tuple[str, str, int], dict[str, Any]] = {}
    for c in m.cells:
        if c.target == "direct" and c.summary and not c.summary.get("failed"):  # measured, with the type narrowed
            direct[(c.up_key, c.mode, c.concurrency)] = c.summary
    restarts = ""
    if m.startups[1:]:
        later = [
            f"{x:.2f} s" + (f" ({w} workers)" if w > 1 else "")
            for x, w in zip(m.startups[1:], m.startup_workers[1:], strict=True)
        ]
        restarts = f" (later starts: the workers cell's, the idle tests', restarts: {', '.join(later)})"
    lines = [
        "# Load test results",
        "",
        f"Generated by `{shlex.join(['python', '-m', 'loadtests.run_matrix', *a.argv])}` on "
        f"{m.started_at.strftime('%Y-%m-%d %H:%M UTC')} in {wall_s / 60:.1f} min.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += [
        f"- RLIMIT_NOFILE (runner and children): {m.nofile[0]} soft / {m.nofile[1]} hard",
        "",
        "The load generator, the fake upstream and the gateway share these cores: at high concurrency the numbers "
        "are a lower bound on what the gateway does alone (see the loadgen CPU column).",
        "",
        "## Set-up",
        "",
        f"- Upstream: first chunk after {a.first_ms:g} ms, then {a.chunks} content chunks every {a.gap_ms:g} ms "
        f"(a stream lasts ~{a.first_ms + (a.chunks - 1) * a.gap_ms:g} ms; JSON answers after "
        f"{a.first_ms + a.chunks * a.gap_ms:g} ms).",
        *_timers_lines(m),
        f"- Cells: requests = max({a.min_requests}, {a.requests_factor} x concurrency), duration cap {a.duration:g} s, "
        f"per-request timeout {a.timeout:g} s"
        + (", after one unmeasured warm-up round (concurrency requests)" if a.cell_warmup else ", no warm-up round")
        + ". `fast` = `fast_path = true`, `full` = `fast_path = false` (the full LiteLLM path).",
        f"- Ramp: the users of a cell start evenly spread over {m.ramp_s():g} s (direct and gateway alike), so "
        "that concurrency N is N streams in flight, not N requests arriving in the same millisecond"
        + (" (`--ramp 0`: all at once)." if m.ramp_s() == 0 else "; `--ramp 0` measures that burst instead."),
        "- Gateway: one worker, the default resume log (in memory), metrics, the access log line per request "
        '(`log_level = "info"`, to a file) and limits on for every caller (high enough never to refuse): what a '
        "deployment does per request. The configuration is at the end of this report.",
        f"- **Gateway start-up (spawn -> /health/ready 200): {_fmt(m.startup_s, 2)} s**" + restarts,
    ]
    if a.workers_cell:
        lines.append(
            f"- Workers cell: SSE at c={a.workers_cell} through a gateway with {a.workers} worker processes behind "
            "its one port (`server.workers`), beside direct at the same concurrency; the load generator and the "
            "upstream share the cores, so the ratio to direct is the figure (the workers' CPU is not read)."
        )
    if a.gateway_env:
        lines.append(f"- Extra gateway environment: `{' '.join(a.gateway_env)}`")
    error_notes: list[str] = []
    if m.cells:
        lat_rows: list[str] = []
        res_rows: list[str] = []
        for c in m.cells:
            s = c.summary or {}
            key = f"| {c.target} | {c.mode} | {c.shown_model} | {c.timers} | {c.concurrency} |"
            if s.get("failed"):
                lat_rows.append(key + " **failed** |" + " - |" * 7)
                res_rows.append(key + " **failed** |" + " - |" * 14)
                error_notes.append(f"- {c.name}: {s['failed']}")
                continue
            lat, res = _cell_rows(c, s, direct)
            lat_rows.append(key + lat)
            res_rows.append(key + res)
            if s.get("errors"):
                error_notes.append(f"- {c.name}: {s.get('error_kinds')}; e.g. {s.get('error_samples', [])[:2]}")
            if c.note:
                error_notes.append(f"- {c.name}: {c.note}")
        lines += [
            "",
            "## Latency",
            "",
            "Milliseconds. *TTFB*: request written -> first content chunk (JSON: -> response headers); for a new "
            "SSE connection it includes waiting to be accepted; with per-stream timers the first chunk comes "
            f"{a.first_ms:g} ms plus the stream's phase (0-{a.gap_ms:g} ms) after the request. *+TTFB*: gateway "
            "minus direct upstream at the same concurrency and timers, percentile by percentile (WebSocket cells "
            "are compared with direct SSE). *gap p99*: "
            "between consecutive content chunks (the upstream sends one every "
            f"{a.gap_ms:g} ms). *end p99*: last content chunk -> `[DONE]` / done frame. *total p50*: request -> "
            "end. *connect p99*: TCP connect (+ WebSocket handshake).",
            "",
            "| target | mode | model | timers | conc | TTFB p50 / p95 / p99 | +TTFB p50 / p95 / p99 | gap p99 "
            "| end p99 | total p50 | connect p99 | ok / sent | errors |",
            "|---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
            *lat_rows,
            "",
            "## Throughput and resources",
            "",
            "*errors*: non-200, error events or frames, timeouts, missing `[DONE]`, failed connects or handshakes "
            "(kinds below). *cut*: still in flight when the cell's duration cap + "
            f"{a.drain:g} s drain ran out, aborted and not judged (overload). *x direct*: chunks/s over the direct "
            "run's at the same concurrency (req/s for JSON). *CPU/1k*: CPU seconds per 1000 content chunks "
            "delivered (ms per request for JSON); *wake/1k*: times the gateway's event loop slept and was woken, per "
            "1000 chunks (1000 = every chunk wakes an idle process; near 0 = it never sleeps); *CPU %*: CPU time / "
            "wall time, 100% = one core. *RSS*: max "
            "sampled. *up peak*: most upstream calls open at once. *others CPU %*: the machine's CPU used by "
            "neither the gateway, the upstream nor the load generator during the cell (other work on the shared "
            "cores: the cell's noise; 100% = one core).",
            "",
            "| target | mode | model | timers | conc | ok / sent | errors | cut | req/s | chunks/s | x direct "
            "| gw CPU/1k | gw wake/1k | gw CPU % | gw RSS MB | up CPU/1k | up CPU % | up peak | loadgen CPU % "
            "| others CPU % |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *res_rows,
        ]
    lines += _floor_lines(m)
    lines += _adapter_lines(m)
    lines += _comparison_lines(m)
    lines += _embeddings_lines(m, direct)
    if m.idle:
        lines += [
            "",
            "## Idle streams (memory per open stream)",
            "",
            "N SSE streams against a model whose first chunk comes after 10 minutes; the gateway's RSS is sampled "
            "before opening (baseline) and at the plateau with all of them open.",
            "",
            "| model | streams open / asked | time to open s | errors | RSS before MB | RSS open MB | KB per stream "
            "| RSS after close MB | upstream streams open |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in m.idle:
            if s.get("failed"):
                lines.append(f"| {s.get('model')} | - / {s.get('requested')} | **failed** | | | | | | |")
                error_notes.append(f"- idle {s.get('model')}: {s['failed']}")
                continue
            lines.append(
                f"| {s.get('model')} | {s.get('opened')} / {s.get('requested')} | {_fmt(s.get('open_s'))} | "
                f"{s.get('errors')} | {_fmt(s.get('base_rss_mb'))} | {_fmt(s.get('open_rss_mb'))} | "
                f"{_fmt(s.get('rss_kb_per_stream'))} | {_fmt(s.get('after_close_rss_mb'))} | "
                f"{_fmt(s.get('upstream_active_open'))} |"
            )
            if s.get("errors"):
                error_notes.append(f"- idle {s.get('model')}: {s.get('error_kinds')}; e.g. {s.get('error_samples')}")
    if m.warmup_errors:
        error_notes += [f"- {e}" for e in m.warmup_errors]
    if error_notes or m.problems:
        lines += ["", "## Errors and problems", ""] + error_notes + [f"- {p}" for p in m.problems]
    toml = m.toml()
    lines += ["", "## Gateway configuration used", "", "```toml", toml, "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def _timers_arg(text: str) -> list[str]:
    timers = text.split(",")
    for t in timers:
        if t not in TIMERS:
            raise argparse.ArgumentTypeError(f"{t!r}: timers are {', '.join(TIMERS)}")
    if len(set(timers)) != len(timers):
        raise argparse.ArgumentTypeError("each timers variant once")
    return timers


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the gateway load matrix and write loadtests/results.md.")
    p.add_argument("--quick", action="store_true", help="smaller matrix: c=1,32,256, short cells, idle 500")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 1,32,256,1024")
    p.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=["sse", "ws", "json"],
        help="sse,ws,json, responses,responses_ws,messages (through those APIs: SSE, or the Responses WebSocket "
        "mode) and embeddings (JSON, at --json-concurrency)",
    )
    p.add_argument("--deployments", type=lambda s: s.split(","), default=["fast", "full"])
    p.add_argument("--json-concurrency", type=int, default=32)
    p.add_argument("--min-requests", type=int, help="requests per cell = max(this, factor x concurrency)")
    p.add_argument("--requests-factor", type=int)
    p.add_argument("--duration", type=float, help="seconds after which a cell starts no request")
    p.add_argument("--timeout", type=float, help="per-request timeout")
    p.add_argument("--drain", type=float, help="seconds in-flight requests may finish after the cap, then 'cut'")
    p.add_argument("--idle", type=int, help="idle streams to open (0 = skip)")
    p.add_argument(
        "--idle-models",
        type=lambda s: s.split(","),
        help="deployments for the idle test: slow (fast_path true), slow_full (false); full default: slow",
    )
    p.add_argument("--idle-timeout", type=float, help="bound for opening the idle streams")
    p.add_argument("--first-ms", type=float, default=50.0)
    p.add_argument("--gap-ms", type=float, default=10.0)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--pause", type=float, default=0.5, help="seconds between cells")
    p.add_argument(
        "--ramp", type=float, help="seconds over which a cell's users start (default: one stream's length; 0: at once)"
    )
    p.add_argument(
        "--timers",
        type=_timers_arg,
        default=["stream"],
        help="the upstream's chunk timing, headline first: stream (a timer per stream, own phase) and/or wheel "
        "(one shared 1 ms wheel), e.g. stream,wheel for the wheel rows as a variant",
    )
    p.add_argument(
        "--variant-concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[32, 256],
        help="concurrencies of the non-headline --timers variants (default 32,256)",
    )
    p.add_argument(
        "--resilience",
        action="store_true",
        help=f"also {RESILIENT} (num_retries 1, fallbacks) against fast, and the TTFB of one retry ({RETRY})",
    )
    p.add_argument("--resilience-concurrency", type=_ints, default=[32, 256], help="fast vs fast_resilient cells")
    p.add_argument("--retry-concurrency", type=_ints, default=[1, 32], help="fast vs retry TTFB cells")
    p.add_argument("--resilience-rounds", type=int, help="back-to-back pairs per concurrency (default 3; quick 2)")
    p.add_argument("--h2", action="store_true", help=f"also {H2}: the relay over TLS + HTTP/2 to a TLS upstream")
    p.add_argument("--h2-concurrency", type=_ints, default=[32, 256], help=f"{H2} cells (default 32,256)")
    p.add_argument(
        "--no-cell-warmup",
        dest="cell_warmup",
        action="store_false",
        help="no unmeasured warm-up round before each cell (plain loadgen runs have one by default)",
    )
    p.add_argument("--no-direct", action="store_true", help="skip the direct-to-upstream baseline")
    p.add_argument(
        "--bare",
        action="store_true",
        help="also SSE cells through a bare uvloop TCP relay (loadtests.bare_relay): the floor for a Python relay",
    )
    p.add_argument(
        "--floor-rounds",
        type=int,
        default=0,
        help="with --bare: also the bare relay, gateway SSE and gateway WebSocket cells back to back, this many"
        " rounds per --floor-concurrency, and the ratios of each round (reported in their own section)",
    )
    p.add_argument("--floor-concurrency", type=_ints, default=[32, 256], help="--floor-rounds cells (default 32,256)")
    p.add_argument(
        "--adapter-rounds",
        type=int,
        default=0,
        help="also the client APIs' cells of --modes (responses, messages, responses_ws) and chat completions' on"
        " the same transport back to back, this many rounds per --adapter-concurrency, and each API's change"
        " against chat's in each round (reported in their own section)",
    )
    p.add_argument("--adapter-concurrency", type=_ints, default=[32], help="--adapter-rounds cells (default 32)")
    p.add_argument(
        "--floors",
        action="store_true",
        help="also SSE and JSON cells through the floors under the gateway: its own HTTP/1.1 protocol on its"
        " upstream client (loadtests.protocol_floor, target 'proto') and uvicorn with a plain ASGI relay"
        " (loadtests.asgi_floor, target 'asgi')",
    )
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument(
        "--workers-cell",
        type=int,
        default=0,
        help="also SSE at this concurrency with --workers worker processes (e.g. 512; 0: none)",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes of the --workers-cell gateway")
    p.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway (repeatable)")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument(
        "--max-restarts", type=int, default=4, help="restart a gateway or upstream that died at most this often"
    )
    p.add_argument("--max-minutes", type=float, help="hard cap on the whole run")
    p.add_argument("--out", type=Path, default=HERE / "results.md")
    p.add_argument("--json-out", type=Path, help="also write every raw summary as JSON")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # for the report's header: how it was run
    quick = a.quick
    defaults = {
        "concurrency": QUICK_CONCURRENCY if quick else FULL_CONCURRENCY,
        # The same cell shape as a plain loadgen run (loadgen.MIN_REQUESTS, loadgen.ROUNDS): one cell of
        # the matrix and that run measure the same thing. --quick trades that for time.
        "min_requests": 20 if quick else MIN_REQUESTS,
        "requests_factor": 2 if quick else ROUNDS,
        "duration": 8.0 if quick else 30.0,
        "timeout": 15.0 if quick else 20.0,
        "drain": 5.0 if quick else 10.0,
        "idle_models": ["slow", "slow_full"] if quick else ["slow"],
        "idle_timeout": 60.0 if quick else 180.0,
        "idle": 500 if quick else 5000,
        "max_minutes": 8.0 if quick else 20.0,
        "resilience_rounds": 2 if quick else 3,
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


async def amain(args: argparse.Namespace) -> int:
    m = Matrix(args)
    machine = machine_info()
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    rc = 0
    try:
        await asyncio.wait_for(m.run(), args.max_minutes * 60)
    except TimeoutError:
        m.problems.append(f"the run hit its --max-minutes cap ({args.max_minutes:g} min) and was stopped")
        rc = 1
    except RuntimeError as exc:
        m.problems.append(str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        rc = 1
    except asyncio.CancelledError:  # Ctrl-C (asyncio.Runner cancels the main task) or SIGTERM
        m.problems.append("interrupted: the report is partial")
        print("interrupted: stopping children", file=sys.stderr, flush=True)
        rc = 130
    finally:
        await asyncio.shield(m.children.stop_all())
    if m.problems or any((c.summary or {}).get("failed") for c in m.cells):
        print(f"child logs kept in {m.tmp}", flush=True)
    else:
        shutil.rmtree(m.tmp, ignore_errors=True)
    if m.cells or m.idle or m.problems:
        report = render(m, machine, time.perf_counter() - t0)
        args.out.write_text(report)
        print("\n" + report, flush=True)
        print(f"written to {args.out}", flush=True)
        if args.json_out:
            raw = {
                "machine": machine,
                "startup_s": m.startups,
                "cells": [{"cell": c.name, "upstream_peak": c.upstream_peak, **(c.summary or {})} for c in m.cells],
                "idle": m.idle,
                "problems": m.problems,
            }
            args.json_out.write_text(json.dumps(raw, indent=1))
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"run_matrix: {shlex.join(sys.argv[1:]) or '(full matrix)'}", flush=True)
    import uvloop

    try:
        return int(uvloop.run(amain(args)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for registry in _REGISTRIES:
            registry.kill_all_now()


if __name__ == "__main__":
    sys.exit(main())
