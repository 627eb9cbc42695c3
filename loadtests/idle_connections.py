"""How many idle connections one worker survives: a real ``python -m app`` under a file-descriptor
limit, flooded with connections that never send a byte, while a client keeps asking /health/live.

    .venv/bin/python -m loadtests.idle_connections --idle 2000 --fd-limit 1024

Prints how many idle connections were held, evicted to make room, or refused with the 503,
how /health/live fared during the flood, and how long the server took to shed the idle ones
(``server.header_timeout_s``). Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_gateway(port: int, fd_limit: int, header_timeout_s: float, workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "gateway.toml"
    config.write_text(
        f'[server]\nport = {port}\nlog_level = "warning"\nheader_timeout_s = {header_timeout_s}\n\n'
        '[[models.deployments]]\nname = "demo"\nlitellm_model = "demo/demo"\n'
    )

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    env = {**os.environ, "CHAT_CONFIG": str(config), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    log = (workdir / "gateway.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_fds
    )


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the gateway exited during start-up")
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=2000, help="idle connections to open")
    parser.add_argument("--fd-limit", type=int, default=1024, help="the gateway's RLIMIT_NOFILE")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="server.header_timeout_s")
    args = parser.parse_args(argv)
    # This process holds the idle sockets: make room for them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle + 256)), hard))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        process = start_gateway(port, args.fd_limit, args.header_timeout, Path(tmp))
        try:
            wait_ready(base, process)
            sockets: list[socket.socket] = []
            opened_at = time.monotonic()
            for _ in range(args.idle):
                try:
                    sockets.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break
            time.sleep(0.5)  # let the server accept (and refuse) them
            refused = held = 0
            for sock in sockets:
                sock.setblocking(False)
                try:
                    data = sock.recv(4096)
                    refused += data.startswith(b"HTTP/1.1 503")
                except BlockingIOError:
                    held += 1
                except OSError:
                    refused += 1
            live_ok = live_failed = 0
            latencies: list[float] = []
            with httpx.Client(base_url=base, timeout=2) as client:
                for _ in range(20):
                    started = time.perf_counter()
                    try:
                        status = client.get("/health/live").status_code
                    except httpx.HTTPError:
                        status = 0
                    latencies.append((time.perf_counter() - started) * 1000)
                    if status == 200:
                        live_ok += 1
                    else:
                        live_failed += 1
            # How long until the server has shed every idle connection (header timeout).
            shed_deadline = opened_at + args.header_timeout + 15
            remaining = [s for s in sockets]
            while remaining and time.monotonic() < shed_deadline:
                still: list[socket.socket] = []
                for sock in remaining:
                    try:
                        if sock.recv(4096) == b"":
                            continue
                    except BlockingIOError:
                        still.append(sock)
                        continue
                    except OSError:
                        continue
                remaining = still
                time.sleep(0.2)
            shed_s = time.monotonic() - opened_at
            for sock in sockets:
                sock.close()
            print(
                f"fd limit {args.fd_limit}: opened {len(sockets)} idle connections; held {held}, evicted "
                f"{len(sockets) - held - refused}, refused with 503 {refused}; "
                f"/health/live during the flood {live_ok}/{live_ok + live_failed} ok "
                f"(p50 {sorted(latencies)[len(latencies) // 2]:.1f} ms); idle ones shed after {shed_s:.1f} s "
                f"(header_timeout_s {args.header_timeout}); still open then: {len(remaining)}"
            )
            return 0 if live_failed == 0 and not remaining else 1
        finally:
            process.terminate()
            process.wait(15)


if __name__ == "__main__":
    sys.exit(main())
