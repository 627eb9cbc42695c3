"""Running uvicorn for ``python -m app``: the listening socket first, then one or several workers.

The socket is bound before LiteLLM's slow import, so a port already in use is reported at once
instead of after the import; ``listen()`` still waits for uvicorn, so nothing connects before the app
can answer. Readiness is read off that socket (``SO_ACCEPTCONN``), which tells the same thing for
one worker in this process and for several in child processes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import uvicorn
from uvicorn.supervisors import Multiprocess

#: uvicorn's exit status for a worker whose start-up failed.
STARTUP_FAILURE = 3
#: How often the ready watch looks at the socket.
READY_POLL_S = 0.01


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); raises OSError with the reason."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY only on connections accepted from a
    # listener that says TCP, and without it Nagle's algorithm delays small stream writes.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)  # worker processes serve the same socket
    return sock


def watch_ready(sock: socket.socket, on_ready: Callable[[], None]) -> threading.Event:
    """Call ``on_ready`` once ``sock`` accepts connections; set the returned event to stop watching."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(READY_POLL_S):
            try:
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            except OSError:
                return  # closed: the server stopped before it was ready
            if listening:
                on_ready()
                return

    threading.Thread(target=watch, name="ready-watch", daemon=True).start()
    return stop


def serve(config: uvicorn.Config, sock: socket.socket) -> bool:
    """Serve until shut down; False when start-up failed (a one-line reason is already printed)."""
    if config.workers > 1:
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
        return not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; the shutdown already ran
    return server.started
