"""The chat page talking the Responses API (its setting) in a real headless Chromium.

With the setting on, the page's socket is the Responses WebSocket mode on /v1/responses:
``response.create`` frames, ``response.output_text.delta`` rendered, each question after a completed
answer naming that answer's id as ``previous_response_id`` (the gateway rebuilds the conversation
from its store), Stop closing the socket. Off by default: chat completions on /v1/chat/completions.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocket, expect

from tests.conftest import ServerThread
from tests.helpers.fake_provider import FakeProvider
from tests.page.test_browser import (
    ASSISTANT,
    CONTENT,
    FULL_REPLY,
    ask,
    browser,
    first_token_shown,
    new_probe,
    open_chat,
    page_gateway,
    send_message,
)

pytestmark = pytest.mark.browser
__all__ = ["browser", "page_gateway"]  # module-scoped fixtures shared with test_browser


class Sockets:
    """Every WebSocket the page opens, with the JSON frames it sent and received on each."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        page.on("websocket", self._opened)

    def _opened(self, socket: WebSocket) -> None:
        self.urls.append(socket.url)
        socket.on("framesent", lambda payload: self._frame(self.sent, payload))
        socket.on("framereceived", lambda payload: self._frame(self.received, payload))

    @staticmethod
    def _frame(into: list[dict[str, Any]], payload: str | bytes) -> None:
        frame = json.loads(payload)
        if isinstance(frame, dict):
            into.append(frame)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.received if f.get("type") == kind]


def responses_url(gateway: ServerThread) -> str:
    return gateway.base_url.replace("http://", "ws://") + "/v1/responses"


async def use_responses(page: Page) -> None:
    """Turn the setting on from the page's settings panel, and wait for the new socket."""
    await page.click("#key-button")
    checkbox = page.get_by_role("checkbox", name="Talk the Responses API")
    await expect(checkbox).not_to_be_checked()  # off by default
    await checkbox.check()
    await page.click("#key-button")
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#send")).to_be_enabled()


async def test_off_by_default_the_page_talks_chat_completions(browser: Browser, page_gateway: ServerThread) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        sockets = Sockets(page)
        await open_chat(page, page_gateway, "normal")
        await ask(page, "Hello", answers=1)
        await expect(page.locator(CONTENT)).to_have_text(FULL_REPLY)
        assert sockets.urls == [page_gateway.ws_url]  # ws://.../v1/chat/completions
        assert [f["type"] for f in sockets.sent] == ["chat.completion.create"]
        assert await page.evaluate("localStorage.getItem('chat-gateway.api')") is None
        probe.assert_clean()


async def test_two_turns_over_responses_chain_by_response_id(
    browser: Browser, page_gateway: ServerThread, fake: FakeProvider
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        sockets = Sockets(page)
        await open_chat(page, page_gateway, "normal")
        await use_responses(page)
        assert sockets.urls[-1] == responses_url(page_gateway)

        await ask(page, "First question", answers=1)
        first = page.locator(ASSISTANT).first
        await expect(first).to_have_attribute("data-state", "done")
        await expect(first.locator(".content")).to_have_text(FULL_REPLY)
        assert await page.evaluate("window.chatStats.chunks") == len(sockets.of_type("response.output_text.delta")) > 1
        meta = await first.locator(".meta").text_content()
        assert meta is not None and meta.startswith("normal · "), meta

        await ask(page, "Second question", answers=2)
        second = page.locator(ASSISTANT).nth(1)
        await expect(second).to_have_attribute("data-state", "done")
        await expect(second.locator(".content")).to_have_text(FULL_REPLY)

        creates = [f for f in sockets.sent if f.get("type") == "response.create"]
        ids = [f["response"]["id"] for f in sockets.of_type("response.completed")]
        assert len(creates) == 2 and len(ids) == 2, (creates, ids)
        assert "previous_response_id" not in creates[0]
        assert creates[0]["input"] == [{"role": "user", "content": "First question"}]
        # The second turn sends only the new question, naming the first answer's response id ...
        assert creates[1]["previous_response_id"] == ids[0]
        assert creates[1]["input"] == [{"role": "user", "content": "Second question"}]
        # ... and the gateway rebuilt the whole conversation for the provider.
        assert fake.requests[-1].body["messages"] == [
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": FULL_REPLY},
            {"role": "user", "content": "Second question"},
        ]

        # The setting is kept in this browser: after a reload the page talks Responses again.
        await page.reload()
        await expect(page.locator("#status")).to_have_text("connected")
        assert sockets.urls[-1] == responses_url(page_gateway)
        assert await page.evaluate("localStorage.getItem('chat-gateway.api')") == "responses"
        await page.click("#key-button")
        await expect(page.get_by_role("checkbox", name="Talk the Responses API")).to_be_checked()
        probe.assert_clean()


async def test_stop_closes_the_responses_socket_and_the_next_turn_resends_the_conversation(
    browser: Browser, page_gateway: ServerThread, fake: FakeProvider
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        sockets = Sockets(page)
        await open_chat(page, page_gateway, "slow_gap")
        await use_responses(page)
        await send_message(page, "Tell me something slowly")
        await first_token_shown(page)
        await page.click("#stop")
        assistant = page.locator(ASSISTANT)
        await expect(assistant).to_have_attribute("data-state", "cancelled")
        await expect(assistant.locator(".badge")).to_have_text("stopped")
        partial = await assistant.locator(".content").text_content()
        assert partial and FULL_REPLY.startswith(partial) and len(partial) < len(FULL_REPLY), partial
        record = fake.requests[-1]
        await fake.await_disconnect(record, timeout=3)  # closing the socket stopped the provider call
        assert record.completed_at is None

        await expect(page.locator("#status")).to_have_text("connected")  # a new socket, at once
        await page.select_option("#model", "normal")
        await ask(page, "Go on", answers=2)
        await expect(page.locator(ASSISTANT).nth(1)).to_have_attribute("data-state", "done")
        # A stopped answer has no stored response to chain to: the whole conversation goes instead.
        last = [f for f in sockets.sent if f.get("type") == "response.create"][-1]
        assert "previous_response_id" not in last
        assert last["input"] == [
            {"role": "user", "content": "Tell me something slowly"},
            {"role": "assistant", "content": partial},
            {"role": "user", "content": "Go on"},
        ]
        probe.assert_clean()
