"""The Responses API's WebSocket mode on the same paths as its POST handler (docs/responses.md)."""

from __future__ import annotations

from typing import Any

from litestar import WebSocket, websocket

from app.api.responses.ws import ResponsesSocketSession
from app.observability.metrics import Metrics
from app.routes.responses import RESPONSES_PATHS
from app.transport.socket_release import release


@websocket(path=RESPONSES_PATHS)
async def responses_socket(socket: WebSocket[Any, Any, Any]) -> None:
    # The services from the app's state, as the chat socket's handler takes them (chat_socket.py).
    state = socket.app.state
    metrics: Metrics = state.metrics
    session = ResponsesSocketSession(
        socket,
        state.responses,
        state.settings,
        state.gateway_keys,
        drain=state.drain,
        on_open=metrics.socket_opened,
        on_close=metrics.socket_closed,
    )
    try:
        await session.run()
    finally:
        release(socket)
