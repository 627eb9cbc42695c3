"""One /metrics for the whole server when uvicorn runs several worker processes.

Each worker keeps counting in its own memory, as with one worker: nothing is shared or sent on the
request path. When ``python -m app`` starts more than one worker it makes a private directory
(mode 0700) and names it in ``CHAT_WORKER_METRICS_DIR``; every worker then serves its own
exposition on a unix socket there, ``worker-<pid>.sock`` (connect, read to the end: no protocol
beyond that). Whichever worker a scrape reaches asks all the others at that moment, concurrently,
and answers with the merged text (``app/observability/metrics_merge.py``), so each scrape describes the whole
server and counters never jump between one worker's value and another's.

A socket nobody listens on any more (its worker died and uvicorn started a new one) is removed and
skipped: that worker's counts are gone, which Prometheus reads as a counter reset, as it would
for a restarted process. A live worker that does not answer within ``timeout_s`` fails the
scrape with an error (Prometheus records a failed scrape) rather than returning a partial sum
that would look like a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from app.observability.metrics_merge import merge_expositions

if TYPE_CHECKING:
    from litestar import Litestar

    from app.config.settings import Settings
    from app.observability.metrics import Metrics

WORKER_METRICS_DIR_ENV = "CHAT_WORKER_METRICS_DIR"  # no "__": not a settings override
_SUFFIX = ".sock"


class WorkerUnavailable(Exception):
    """A live worker did not hand over its metrics in time."""


@contextlib.contextmanager
def worker_metrics_dir(workers: int, environ: MutableMapping[str, str] | None = None) -> Iterator[Path | None]:
    """For ``python -m app``: with several workers, a private directory named in the environment
    that the workers inherit, removed when the server stops. With one worker: nothing."""
    environ = os.environ if environ is None else environ
    if workers <= 1:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="chat-gateway-metrics-"))
    environ[WORKER_METRICS_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        environ.pop(WORKER_METRICS_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


class WorkerMetrics:
    """This worker's exposition on its socket, and the whole server's when it is scraped."""

    def __init__(self, directory: Path, render: Callable[[], bytes], timeout_s: float = 2.0) -> None:
        self.directory = directory
        self._render = render
        self._timeout = timeout_s
        self.path = directory / f"worker-{os.getpid()}{_SUFFIX}"
        self._server: asyncio.AbstractServer | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], render: Callable[[], bytes]) -> WorkerMetrics | None:
        directory = environ.get(WORKER_METRICS_DIR_ENV)
        return cls(Path(directory), render) if directory else None

    async def start(self) -> None:
        # Bound under a temporary name and renamed once listening: a scraping worker that finds the
        # path always finds a socket that accepts, never one it would take for a dead worker's.
        pending = self.path.with_suffix(".pending")
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(pending))
        os.replace(pending, self.path)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            await server.wait_closed()

    async def _serve(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._render())
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the asking worker gave up (timeout) or went away
        finally:
            writer.close()

    async def scrape(self) -> bytes:
        """The merged exposition of every live worker, this one included."""
        own = self._render()
        others = [p for p in self.directory.glob(f"worker-*{_SUFFIX}") if p != self.path]
        texts = await asyncio.gather(*(self._ask(p) for p in others))
        parts = [own.decode()] + [t for t in texts if t is not None]
        if len(parts) == 1:
            return own
        # Parsing and re-rendering is a few milliseconds of pure Python: off the event loop, so
        # that the streams this worker relays do not wait for a scrape.
        return await asyncio.to_thread(merge_expositions, parts)

    async def _ask(self, path: Path) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    data = await reader.read()
                finally:
                    writer.close()
        except (ConnectionRefusedError, FileNotFoundError):
            if not _pid_alive(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # a local directory entry: no I/O worth a thread
            return None  # a worker that is gone, or shutting down: its counts went with it
        except (TimeoutError, OSError) as exc:
            raise WorkerUnavailable(f"{path.name}: {type(exc).__name__}") from exc
        return data.decode()


def _pid_alive(path: Path) -> bool:
    try:
        pid = int(path.stem.removeprefix("worker-"))
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Scrape = Callable[[], Awaitable[bytes]]


def scrape_lifespan(
    settings: Settings, metrics: Metrics, environ: Mapping[str, str] | None = None
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Puts ``app.state.scrape`` in place: this worker's metrics, or, under ``python -m app`` with
    several workers, the whole server's (and this worker's socket for the others to ask)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        env = os.environ if environ is None else environ
        workers = WorkerMetrics.from_environ(env, metrics.render) if settings.server.workers > 1 else None
        if workers is None:

            async def local() -> bytes:
                return metrics.render()

            app.state.scrape = local
            yield
            return
        await workers.start()
        app.state.scrape = workers.scrape
        try:
            yield
        finally:
            await workers.stop()

    return lifespan
