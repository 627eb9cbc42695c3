"""Chat completions over WebSocket on the same paths as the POST handler."""

from __future__ import annotations

from typing import Any

from litestar import WebSocket, websocket

from app.api.chat.ws_session import ChatSocketSession
from app.observability.metrics import Metrics
from app.routes.chat import CHAT_PATHS
from app.transport.socket_release import release


@websocket(path=CHAT_PATHS)
async def chat_socket(socket: WebSocket[Any, Any, Any]) -> None:
    # The services from the app's state, not as injected dependencies: Litestar resolves a
    # handler's dependencies in an anyio task group, a task per dependency, which was a fifth of
    # a connection's CPU (loadtests/README.md); a socket's handler runs once per connection.
    state = socket.app.state
    metrics: Metrics = state.metrics
    session = ChatSocketSession(
        socket,
        state.chat,
        state.settings,
        state.gateway_keys,
        drain=state.drain,
        resumes=state.resumes,
        on_open=metrics.socket_opened,
        on_close=metrics.socket_closed,
        quote=state.quote,
        info_line=state.info_line,
    )
    try:
        await session.run()
    finally:
        release(socket)
