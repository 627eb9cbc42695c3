"""The Responses API's WebSocket mode on the same paths as its POST handler (docs/responses.md)."""

from __future__ import annotations

from typing import Any

from litestar import WebSocket, websocket
from litestar.di import NamedDependency

from app.access.keys import GatewayKeys
from app.api.responses.service import ResponsesService
from app.api.responses.ws import ResponsesSocketSession
from app.config.settings import Settings
from app.observability.metrics import Metrics
from app.routes.responses import RESPONSES_PATHS
from app.transport.socket_release import release


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
    try:
        await session.run()
    finally:
        release(socket)
