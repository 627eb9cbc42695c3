"""The Responses API's WebSocket mode on the same paths as its POST handler (API.md 7)."""

from __future__ import annotations

from typing import Any

from litestar import WebSocket, websocket
from litestar.di import NamedDependency

from app.access.keys import GatewayKeys
from app.metrics import Metrics
from app.responses.service import ResponsesService
from app.routes.responses import RESPONSES_PATHS
from app.settings import Settings
from app.streaming.responses_ws import ResponsesSocketSession


@websocket(path=RESPONSES_PATHS)
async def responses_socket(
    socket: WebSocket[Any, Any, Any],
    responses: NamedDependency[ResponsesService],
    settings: NamedDependency[Settings],
    keys: NamedDependency[GatewayKeys],
    metrics: NamedDependency[Metrics],
) -> None:
    session = ResponsesSocketSession(
        socket,
        responses,
        settings,
        keys,
        drain=socket.app.state.drain,
        on_open=metrics.socket_opened,
        on_close=metrics.socket_closed,
    )
    await session.run()
