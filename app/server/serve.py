"""Serving the app with uvicorn: options derived from the settings, shared by ``python -m app`` and
the test server, and the connection limits the guarded protocols enforce."""

from __future__ import annotations

import resource
from typing import Any

import structlog

from app.config.settings import Settings
from app.transport.guarded import ConnectionLimits, GatewayConfig

logger = structlog.get_logger("chat.serve")

#: Descriptors kept back from client connections: listeners, Redis, logs, imports, the event loop.
FD_RESERVE = 64


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    ws = settings.websocket
    return {
        # Pings and the frame-size limit live in the protocol layer: the server answers an
        # oversized frame with close code 1009 and drops a peer that stops answering pings.
        "ws_ping_interval": ws.ping_s,
        "ws_ping_timeout": ws.ping_s,
        "ws_max_size": ws.max_frame_bytes,
        # No permessage-deflate (which browsers offer): a token's frame is a couple of hundred bytes,
        # and compressing each one cost a WebSocket stream ~35% more CPU per chunk (loadtests/README.md)
        # and every socket its zlib state, to save a few KB/s per stream. Declined, frames are plain
        # (DirectSocket writes them itself) and a client's frames are never inflated by the server.
        "ws_per_message_deflate": False,
        "timeout_keep_alive": settings.server.keepalive_s,
        # After the drain (app/core/drain.py) has ended everything, uvicorn's own wait has nothing left to
        # wait for; this bounds it anyway.
        "timeout_graceful_shutdown": 5,
        "access_log": False,
        # uvicorn's own records (an exception in the app, a failed start-up) reach the root logger,
        # which configure_logging writes as JSON lines; its default configuration writes plain text.
        "log_config": None,
        "proxy_headers": False,
        "server_header": False,
    }


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (as servers do); return the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(min(soft, hard)) if soft != resource.RLIM_INFINITY else int(hard)


def connection_limits(settings: Settings, fd_limit: int | None = None) -> ConnectionLimits:
    """The limits for the guarded protocols; ``max_connections`` capped so that descriptors last.

    Every streaming client connection holds a provider connection too, so the cap is half of what
    the descriptor limit leaves after a reserve.
    """
    fd_limit = raise_fd_limit() if fd_limit is None else fd_limit
    ceiling = max(16, (fd_limit - FD_RESERVE) // 2)
    wanted = settings.server.max_connections
    if wanted > ceiling:
        logger.warning("max_connections_capped", configured=wanted, capped_to=ceiling, fd_limit=fd_limit)
    return ConnectionLimits(
        header_timeout_s=settings.server.header_timeout_s,
        body_timeout_s=settings.server.body_timeout_s,
        write_timeout_s=settings.streaming.write_timeout_s,
        max_connections=min(wanted, ceiling),
    )


def gateway_config(settings: Settings, app: Any, **kwargs: Any) -> GatewayConfig:
    """uvicorn's Config for ``app`` with the gateway's options and connection limits."""
    return GatewayConfig(app, connection_limits=connection_limits(settings), **{**uvicorn_options(settings), **kwargs})
