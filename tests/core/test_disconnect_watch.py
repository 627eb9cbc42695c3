"""The disconnect watch fed by the connection's hook (app/transport/disconnect.py), on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.transport.disconnect import DISCONNECT_HOOK, ClientGone, DisconnectHook, DisconnectWatch


class _Cycle:
    """What the watch reads of a server's request cycle: ``receive`` bound to an object with a scope."""

    def __init__(self, hook: DisconnectHook) -> None:
        self.scope: dict[str, Any] = {"type": "http", "state": {DISCONNECT_HOOK: hook}}

    async def receive(self) -> dict[str, Any]:
        raise AssertionError("a watch with a hook never reads receive")


async def test_a_connection_lost_mid_wait_ends_the_guarded_wait() -> None:
    hook = DisconnectHook(asyncio.get_running_loop())
    watch = DisconnectWatch(_Cycle(hook).receive)
    asyncio.get_running_loop().call_later(0.05, hook.fire)
    with pytest.raises(ClientGone):
        async with asyncio.timeout(5):
            with watch.guard():
                await asyncio.sleep(10)
    watch.stop()
    assert hook.callback is None


async def test_a_connection_lost_before_the_watch_ends_the_first_guarded_wait_not_its_start() -> None:
    # Lost while the request was being admitted: the guarded work must begin (it owns the admission
    # from then on and settles it as it ends), and then end as for a client that leaves mid-call.
    hook = DisconnectHook(asyncio.get_running_loop())
    hook.fire()
    watch = DisconnectWatch(_Cycle(hook).receive)
    began = False
    with pytest.raises(ClientGone):
        async with asyncio.timeout(5):
            with watch.guard():
                began = True
                await asyncio.sleep(10)
    assert began
    watch.stop()


async def test_a_stopped_watch_ignores_the_loss() -> None:
    hook = DisconnectHook(asyncio.get_running_loop())
    watch = DisconnectWatch(_Cycle(hook).receive)
    watch.stop()
    hook.fire()  # the response was done: nothing is cancelled
    await asyncio.sleep(0)
    assert not watch.gone
