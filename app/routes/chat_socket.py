"""Chat completions over WebSocket on the same paths as the POST handler."""

from __future__ import annotations

from typing import Any

from litestar import WebSocket, websocket
from litestar.di import NamedDependency

from app.access.keys import GatewayKeys
from app.api.chat.ws_session import ChatSocketSession
from app.config.settings import Settings
from app.core.service import ChatService
from app.observability.metrics import Metrics
from app.routes.chat import CHAT_PATHS
from app.transport.socket_release import release


@websocket(path=CHAT_PATHS)
async def chat_socket(
    socket: WebSocket[Any, Any, Any],
    chat: NamedDependency[ChatService],
    settings: NamedDependency[Settings],
    keys: NamedDependency[GatewayKeys],
    metrics: NamedDependency[Metrics],
) -> None:
    session = ChatSocketSession(
        socket,
        chat,
        settings,
        keys,
        drain=socket.app.state.drain,
        resumes=socket.app.state.resumes,
        on_open=metrics.socket_opened,
        on_close=metrics.socket_closed,
        quote=socket.app.state.quote,
        info_line=socket.app.state.info_line,
    )
    try:
        await session.run()
    finally:
        release(socket)
