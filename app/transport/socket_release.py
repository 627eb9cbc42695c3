"""A finished WebSocket's objects freed as it ends, not by the garbage collector.

Litestar's ``WebSocket`` wraps its ``receive`` and ``send`` in closures over itself (they track its
connection state), so each connection would end as a reference cycle: the socket, its scope,
uvicorn's protocol and transport, and the websockets connection with its buffers would all wait
for a collection. Under connection churn (a browser tab per chat, each with its own socket) that is
memory held between collections and long young-generation pauses for every stream of the worker.
Once a socket's session has ended, ``release`` swaps the wrappers for functions that hold nothing,
which breaks the cycle.
"""

from __future__ import annotations

from typing import Any

from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect
from litestar.types import Message, ReceiveMessage

_ENDED = "The WebSocket's session has ended."


async def _receive_after_end() -> ReceiveMessage:
    return {"type": "websocket.disconnect", "code": 1006}


async def _send_after_end(message: Message) -> None:
    raise WebSocketDisconnect(detail=_ENDED)


def release(socket: WebSocket[Any, Any, Any]) -> None:
    """Drop ``socket``'s self-referencing wrappers (call once its session is over)."""
    socket.receive = _receive_after_end
    socket.send = _send_after_end
