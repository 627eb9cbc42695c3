"""End-to-end tests of the chat page (app/static/index.html) in a real headless Chromium.

The page is served by the gateway under real uvicorn and talks WebSocket to
/v1/chat/completions; the gateway streams from the fake provider over real HTTP.
Needs Debian's Chromium at /usr/bin/chromium (Playwright's own browser downloads
are not used); without it every test is skipped with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from tests.conftest import ServerThread
from tests.fake_provider import DEFAULT_CONTENT, FakeProvider

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SKIP_REASON = "Debian chromium is not installed: apt-get install chromium (.ci/run installs it)"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
FULL_REPLY = "".join(DEFAULT_CONTENT)  # "Hello, world! This is the fake provider."
TIMEOUT_MS = 10_000

ASSISTANT = ".msg.assistant"
CONTENT = ".msg.assistant .content"


def chromium_installed() -> bool:
    return os.path.exists(CHROMIUM)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not chromium_installed():
        pytest.skip(SKIP_REASON)
    async with async_playwright() as p:
        try:
            b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        except PlaywrightError as exc:
            if "doesn't exist" in str(exc) or "No such file" in str(exc) or "ENOENT" in str(exc):
                pytest.skip(f"{SKIP_REASON} ({exc.message.splitlines()[0]})")
            raise
        try:
            yield b
        finally:
            await b.close()


@dataclass
class PageProbe:
    page: Page
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.page_errors == [], f"JavaScript errors on the page: {self.page_errors}"
        assert self.dialogs == [], f"dialogs opened on the page: {self.dialogs}"


@pytest.fixture
async def probe(browser: Browser) -> AsyncIterator[PageProbe]:
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    result = PageProbe(page)

    def on_pageerror(err: PlaywrightError) -> None:
        result.page_errors.append(f"{err.name}: {err.message}")

    async def on_dialog(dialog: Dialog) -> None:
        result.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("pageerror", on_pageerror)
    page.on("dialog", on_dialog)
    try:
        yield result
    finally:
        await context.close()


async def open_chat(page: Page, gateway: ServerThread, model: str) -> None:
    await page.goto(f"{gateway.base_url}/?model={model}")
    await expect(page.locator("#status")).to_have_text("connected", timeout=TIMEOUT_MS)
    await expect(page.locator("#model")).to_have_value(model)
    await expect(page.locator("#send")).to_be_enabled()


async def send_message(page: Page, text: str) -> None:
    await page.fill("#prompt", text)
    await page.click("#send")
    await expect(page.locator(ASSISTANT)).to_have_count(1)


async def text_and_state(page: Page) -> dict[str, Any]:
    return await page.evaluate(
        """() => {
            const m = document.querySelector('.msg.assistant');
            return {text: m.querySelector('.content').textContent, state: m.dataset.state,
                    finish: m.dataset.finishReason ?? null};
        }"""
    )


async def test_tokens_render_incrementally(
    browser: Browser, probe: PageProbe, gateway: ServerThread, fake: FakeProvider, tmp_path: Path
) -> None:
    page = probe.page
    await open_chat(page, gateway, "paced")
    await send_message(page, "Say hello")

    # Each round waits (rAF polling) until the text grew past what we saw last, or the stream ended.
    intermediate: list[str] = []
    seen_len = 0
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        remaining_ms = max(1.0, (deadline - time.monotonic()) * 1000)
        handle = await page.wait_for_function(
            """(prev) => {
                const m = document.querySelector('.msg.assistant');
                if (!m) return null;
                const text = m.querySelector('.content').textContent;
                if (m.dataset.state !== 'streaming') return {text, streaming: false};
                return text.length > prev ? {text, streaming: true} : null;
            }""",
            arg=seen_len,
            timeout=remaining_ms,
        )
        snap = await handle.json_value()
        if not snap["streaming"]:
            break
        intermediate.append(snap["text"])
        seen_len = len(snap["text"])

    partial_lengths = sorted({len(t) for t in intermediate if 0 < len(t) < len(FULL_REPLY)})
    assert len(partial_lengths) >= 3, f"expected >= 3 distinct partial renders, saw {intermediate!r}"
    for t in intermediate:
        assert FULL_REPLY.startswith(t), f"partial text {t!r} is not a prefix of the reply"

    assistant = page.locator(ASSISTANT)
    await expect(assistant).to_have_attribute("data-state", "done")
    await expect(assistant).to_have_attribute("data-finish-reason", "stop")
    assert await page.locator(CONTENT).text_content() == FULL_REPLY
    chunks = await page.evaluate("window.chatStats.chunks")
    assert chunks >= 10, f"window.chatStats.chunks = {chunks}"
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#stop")).to_be_disabled()

    shot = tmp_path / "chat.png"
    await page.screenshot(path=str(shot))
    assert shot.exists() and shot.stat().st_size > 0
    print(f"screenshot: {shot} (partial lengths seen: {partial_lengths}, chunks: {chunks})")
    probe.assert_clean()


async def test_stop_cancels_midstream(
    browser: Browser, probe: PageProbe, gateway: ServerThread, fake: FakeProvider
) -> None:
    page = probe.page
    await open_chat(page, gateway, "slow_gap")
    await send_message(page, "Tell me something slowly")

    # First token visible, stream still running (tokens arrive every 300 ms).
    await page.wait_for_function(
        """() => {
            const m = document.querySelector('.msg.assistant');
            return m && m.dataset.state === 'streaming' && m.querySelector('.content').textContent.length > 0;
        }""",
        timeout=TIMEOUT_MS,
    )
    await expect(page.locator("#stop")).to_be_enabled()
    await page.click("#stop")

    assistant = page.locator(ASSISTANT)
    await expect(assistant).to_have_attribute("data-state", "cancelled")
    await expect(assistant).to_have_attribute("data-finish-reason", "cancelled")
    snap = await text_and_state(page)
    assert 0 < len(snap["text"]) < len(FULL_REPLY), f"partial text {snap['text']!r}"
    assert FULL_REPLY.startswith(snap["text"])
    await expect(assistant.locator(".badge")).to_have_text("stopped")
    await expect(page.locator("#send")).to_be_enabled()

    assert fake.requests, "the fake provider saw no request"
    record = fake.requests[-1]
    assert record.model == "slow_gap"
    await fake.await_disconnect(record, timeout=3)
    assert record.completed_at is None
    probe.assert_clean()


async def test_model_output_is_not_html(
    browser: Browser, probe: PageProbe, gateway: ServerThread, fake: FakeProvider
) -> None:
    page = probe.page
    await open_chat(page, gateway, "script")
    await send_message(page, "Show me a script tag")

    assistant = page.locator(ASSISTANT)
    await expect(assistant).to_have_attribute("data-state", "done")
    content = await page.locator(CONTENT).text_content()
    assert content is not None and "<script>alert(1)</script>" in content, content
    assert content == "<script>alert(1)</script> done"
    assert await page.evaluate("document.querySelectorAll('.msg script').length") == 0
    assert await page.evaluate("document.querySelectorAll('.msg.assistant .content *').length") == 0
    assert probe.dialogs == []
    probe.assert_clean()
