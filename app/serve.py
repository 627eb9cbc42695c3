"""uvicorn options derived from the settings, shared by ``python -m app`` and the test server."""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    ws = settings.websocket
    return {
        # Pings and the frame-size limit live in the protocol layer: the server answers an
        # oversized frame with close code 1009 and drops a peer that stops answering pings.
        "ws": "websockets-sansio",
        "ws_ping_interval": ws.ping_s,
        "ws_ping_timeout": ws.ping_s,
        "ws_max_size": ws.max_frame_bytes,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
    }
