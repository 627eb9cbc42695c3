"""The app as ``python -m app`` serves it: a failed start-up is one line on stderr, never a traceback.

``python -m app`` checks the configuration and builds the providers once before uvicorn starts, so
what is left for the app's own start-up to fail on is rare (a backend that cannot be built, a bug).
When it happens, Litestar hands uvicorn the whole formatted traceback (an ExceptionGroup from its
task group, some 80 lines); this wrapper prints the exception's class and first line instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.server.banner import write_line

#: uvicorn's own line after a failed start-up; redundant once ours is printed.
_UVICORN_FAILED = "Application startup failed. Exiting."


def describe(exc: BaseException) -> str:
    """``Class: first line`` of the innermost cause (Litestar wraps start-up errors in an ExceptionGroup)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


class _DropLine(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.text


class StartupGuard:
    """Passes every scope through; only the lifespan's failure report is replaced by one line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_quietly(message: Message) -> None:
            nonlocal started
            if message["type"] == "lifespan.startup.complete":
                started = True
            elif message["type"] == "lifespan.startup.failed":
                message = {**message, "message": ""}  # an empty message: uvicorn prints nothing for it
            await send(message)

        try:
            await self.app(scope, receive, send_quietly)
        except BaseException as exc:
            if not started:
                # One write (the ready line's writer): with several workers, another process's lines
                # share this stderr, and print's two writes let one land in the middle.
                write_line(f"start-up error: {describe(exc)}", sys.stderr)
                logging.getLogger("uvicorn.error").addFilter(_DropLine(_UVICORN_FAILED))
            raise


def app_factory() -> Any:
    """uvicorn ``--factory`` entry point used by ``python -m app``."""
    from app.app import create_app

    return StartupGuard(create_app())
