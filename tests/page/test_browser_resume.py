"""Resuming in a real Chromium: a browser EventSource that reconnects by itself, and the chat page
resuming an answer whose WebSocket dropped."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Route, expect

from app.config.settings import settings_from_dict
from tests.conftest import TEST_STREAMING, ServerThread, settings_dict
from tests.helpers.fake_provider import DEFAULT_CONTENT, Behaviour, FakeProvider
from tests.helpers.sse import chat_body
from tests.page.test_browser import (
    ASSISTANT,
    TIMEOUT_MS,
    browser,
    first_token_shown,
    new_probe,
    open_chat,
    send_message,
)
from tests.resume.test_resume import Reader

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with test_browser

GRACE_S = 8.0  # longer than Chromium's EventSource reconnection delay (3 s)
LONG = Behaviour(content=[f" w{i}" for i in range(40)], gap_s=0.15)  # ~6 s


@pytest.fixture(scope="module")
def grace_gateway(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    fake_provider.set_behaviour("resume_long", LONG)
    data = settings_dict(fake_provider.base_url, streaming={**TEST_STREAMING, "detach_grace_s": GRACE_S})
    data["models"]["deployments"].append(
        {"name": "resume_long", "litellm_model": "openai/resume_long", "api_base": fake_provider.base_url}
    )
    server = ServerThread(settings_from_dict(data, environ={})).start()
    yield server
    server.stop()


class CuttingProxy:
    """A TCP proxy in front of the gateway that cuts the first resume connection after ``cut_after``
    events: the server side of a network drop, as a phone changing networks would see it."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self._target = target_port
        self._cut_after = cut_after
        self.resume_connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        cut = False
        if head.startswith(b"GET /v1/chat/completions/streams/"):
            self.resume_connections += 1
            cut = self.resume_connections == 1
        up_writer.write(head)
        await up_writer.drain()

        async def upstream() -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()

        pumping = asyncio.create_task(upstream())
        seen = 0
        dropped = False
        try:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
                seen += data.count(b"\ndata: ")
                if cut and seen >= self._cut_after:
                    dropped = True
                    break  # drop the connection mid-stream, without a proper end
        except Exception:
            pass
        finally:
            pumping.cancel()
            up_writer.transport.abort()
            if dropped:
                # The browser must have handled the events it was sent before the connection breaks:
                # Chromium fails a response whose last piece and its end arrive together without
                # dispatching that piece (and a replay's first piece holds every event it sends), so
                # it would reconnect without a Last-Event-ID, having seen nothing. Then a FIN.
                await asyncio.sleep(0.5)
                writer.close()
            else:
                writer.transport.abort()


@pytest.fixture
async def proxy(grace_gateway: ServerThread) -> AsyncIterator[CuttingProxy]:
    p = await CuttingProxy(grace_gateway.port, cut_after=3).start()
    yield p
    await p.stop()


async def test_eventsource_reconnects_by_itself_and_loses_nothing(
    browser: Browser, grace_gateway: ServerThread, proxy: CuttingProxy, fake: FakeProvider
) -> None:
    async with httpx.AsyncClient(base_url=grace_gateway.base_url, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions", json=chat_body("resume_long", stream=True)) as r:
            sid = r.headers["x-stream-id"]
            await Reader(r).take(1)  # the original client leaves after one event
    origin = f"http://127.0.0.1:{proxy.port}"
    async with new_probe(browser) as probe:
        page = probe.page

        # A blank page on the proxy's origin, answered by the browser itself: the only connections
        # to the proxy are the EventSource's.
        async def blank(route: Route) -> None:
            await route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>es</title>")

        await page.route(f"{origin}/blank", blank)
        await page.goto(f"{origin}/blank")
        result: dict[str, Any] = await page.evaluate(
            """(sid) => new Promise((resolve) => {
                const ids = [], data = [];
                let errors = 0;
                const es = new EventSource(`/v1/chat/completions/streams/${sid}`);
                es.onmessage = (ev) => {
                    ids.push(ev.lastEventId);
                    data.push(ev.data);
                    if (ev.data === '[DONE]') { es.close(); resolve({ids, data, errors}); }
                };
                es.onerror = () => { errors++; };
                setTimeout(() => { es.close(); resolve({ids, data, errors, timedOut: true}); }, 20000);
            })""",
            sid,
        )
    assert not result.get("timedOut"), result
    assert result["errors"] >= 1  # the drop was seen, and the browser reconnected on its own
    assert proxy.resume_connections == 2
    second = next(h for h in proxy.requests[1:] if h.startswith(b"GET /v1/chat/completions/streams/"))
    # The browser asks for what follows the last event it got before the cut: the proxy cut after at
    # least 3 events (more when the gateway wrote several in one piece: a replay writes what the log
    # holds together).
    asked = re.search(rb"last-event-id: ([0-9a-f]+):(\d+)\r\n", second.lower())
    n = len(result["ids"])
    assert asked is not None and asked[1] == sid.encode() and 3 <= int(asked[2]) < n, second
    assert result["ids"] == [f"{sid}:{i}" for i in range(1, n + 1)]  # nothing lost, nothing twice
    assert result["data"][-1] == "[DONE]"
    import json

    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for d in result["data"][:-1] if (c := json.loads(d))["choices"]
    )
    assert text == "".join(LONG.content)
    assert fake.calls("resume_long") == 1


async def test_the_chat_page_resumes_an_answer_whose_socket_dropped(
    browser: Browser, grace_gateway: ServerThread, fake: FakeProvider
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await open_chat(page, grace_gateway, "slow_gap")
        await send_message(page, "Tell me something slowly")
        await first_token_shown(page)

        async def drop_sockets() -> None:
            # The server side of a network drop: every socket closes under its answers.
            for session in list(grace_gateway.app.state.drain._sessions):
                await session.socket.close(code=1012)

        grace_gateway.call(drop_sockets())
        assistant = page.locator(ASSISTANT)
        await expect(assistant).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        text = await page.evaluate("() => document.querySelector('.msg.assistant .content').textContent")
        assert text == "".join(DEFAULT_CONTENT)  # every token once: nothing lost, nothing repeated
        await expect(page.locator("#status")).to_have_text("connected")
        probe.assert_clean()
    assert fake.calls("slow_gap") == 1
    assert fake.requests[-1].completed_at is not None
