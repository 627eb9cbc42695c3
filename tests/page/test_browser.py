"""End-to-end tests of the chat page (app/static/index.html) in a real headless Chromium.

The page is served by the gateway under real uvicorn and talks WebSocket to
/v1/chat/completions; the gateway streams from the fake provider over real HTTP.
Needs Debian's Chromium at /usr/bin/chromium (Playwright's own browser downloads
are not used); without it every test is skipped with the reason, or fails when CI is set.

Screenshots (desktop, phone, dark) are saved in each test's tmp_path and their paths printed
(`pytest -s` shows them).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Dialog, Page, Response, Route, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from app.config.settings import Settings, settings_from_dict
from tests.conftest import ServerThread, need_tool, settings_dict
from tests.helpers.fake_provider import DEFAULT_CONTENT, Behaviour, FakeProvider

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
        need_tool(SKIP_REASON)
    async with async_playwright() as p:
        try:
            b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        except PlaywrightError as exc:
            if "doesn't exist" in str(exc) or "No such file" in str(exc) or "ENOENT" in str(exc):
                need_tool(f"{SKIP_REASON} ({exc.message.splitlines()[0]})")
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
    statuses: list[tuple[int, str]] = field(default_factory=list)  # every response the page received

    def assert_clean(self) -> None:
        assert self.page_errors == [], f"JavaScript errors on the page: {self.page_errors}"
        assert self.dialogs == [], f"dialogs opened on the page: {self.dialogs}"
        failed = [(status, url) for status, url in self.statuses if status >= 400]
        assert failed == [], f"requests that failed: {failed}"


@asynccontextmanager
async def new_probe(browser: Browser, **context_options: Any) -> AsyncIterator[PageProbe]:
    """A fresh browser context (its own localStorage) and page, recording script errors and dialogs."""
    options: dict[str, Any] = {"viewport": {"width": 900, "height": 640}, **context_options}
    context = await browser.new_context(**options)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    result = PageProbe(page)

    def on_pageerror(err: PlaywrightError) -> None:
        result.page_errors.append(f"{err.name}: {err.message}")

    async def on_dialog(dialog: Dialog) -> None:
        result.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def on_response(response: Response) -> None:
        result.statuses.append((response.status, response.url))

    page.on("pageerror", on_pageerror)
    page.on("dialog", on_dialog)
    page.on("response", on_response)
    try:
        yield result
    finally:
        await context.close()


@pytest.fixture
async def probe(browser: Browser) -> AsyncIterator[PageProbe]:
    async with new_probe(browser) as result:
        yield result


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
    # The page itself records the answer's text at every change while it streams: polling it from
    # here would cost a round trip to the browser per look, and on a loaded machine a few of those
    # can outlast the whole stream.
    await page.evaluate(
        """() => {
            window.partialRenders = [];
            new MutationObserver(() => {
                const m = document.querySelector('.msg.assistant');
                if (m && m.dataset.state === 'streaming') {
                    window.partialRenders.push(m.querySelector('.content').textContent);
                }
            }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )
    await send_message(page, "Say hello")
    await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    intermediate: list[str] = await page.evaluate("window.partialRenders")

    partial_lengths = sorted({len(t) for t in intermediate if 0 < len(t) < len(FULL_REPLY)})
    assert len(partial_lengths) >= 3, f"expected >= 3 distinct partial renders, saw {intermediate!r}"
    for t in intermediate:
        assert FULL_REPLY.startswith(t), f"partial text {t!r} is not a prefix of the reply"

    assistant = page.locator(ASSISTANT)
    await expect(assistant).to_have_attribute("data-state", "done")
    await expect(assistant).to_have_attribute("data-finish-reason", "stop")
    assert await page.locator(CONTENT).text_content() == FULL_REPLY
    chunks = await page.evaluate("window.chatStats.chunks")
    assert chunks == 11, f"window.chatStats.chunks = {chunks}"  # ten content chunks and the finish chunk, once each
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
    await first_token_shown(page)
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
    # Raw HTML in an answer is shown literally: at most paragraphs around the text, no element from the answer.
    tags = await page.evaluate("[...document.querySelectorAll('.msg.assistant .content *')].map(e => e.tagName)")
    assert set(tags) <= {"P"}, tags
    assert probe.dialogs == []
    probe.assert_clean()


# ---- the page as a chat client: markdown, history, regenerate, edit, key, errors, layout ------------

#: Markdown split mid-syntax, so the page must re-render the whole answer as it grows.
MARKDOWN = ["Here is **bo", "ld** text and `co", "de`.\n\n```python\nprint('hi')\n", "```\n\n- one\n- ", "two\n"]
#: What a hostile (or prompt-injected) model might send; none of it may run, load, or navigate.
HOSTILE = [
    "<script>window.pwned = 1</script>\n\n",
    'Look: <img src="x" onerror="window.pwned = 2"> and <svg onload="window.pwned = 3"></svg>\n\n',
    "[click me](javascript:window.pwned=4) ",
    '<a href="javascript:window.pwned=5">or me</a> ',
    "![tracker](http://127.0.0.1:9/pixel.png)\n\n",
    '<iframe src="http://127.0.0.1:9/frame"></iframe> done',
]
PAGE_MODELS = {"markdown": MARKDOWN, "hostile": HOSTILE}
GATEWAY_KEY = "sesame-4f1c"
SCREENSHOT_CONVERSATION = [
    ("markdown", "Show me some markdown"),
    ("normal", "And a plain answer?"),
]


def page_settings(fake: FakeProvider, **server: Any) -> Settings:
    for name, content in PAGE_MODELS.items():
        fake.set_behaviour(name, Behaviour(content=list(content), gap_s=0.02))
    data = settings_dict(fake.base_url, server={"log_level": "warning", **server})
    data["models"]["deployments"] += [
        {"name": name, "litellm_model": f"openai/{name}", "api_base": fake.base_url} for name in PAGE_MODELS
    ]
    return settings_from_dict(data, environ={"PAGE_KEYS": GATEWAY_KEY})


@pytest.fixture(scope="module")
def page_gateway(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    """One gateway for the client tests: the page does not depend on the fast or full provider path."""
    server = ServerThread(page_settings(fake_provider)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_gateway(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    server = ServerThread(page_settings(fake_provider, api_keys_env="PAGE_KEYS"), {"PAGE_KEYS": GATEWAY_KEY}).start()
    yield server
    server.stop()


async def first_token_shown(page: Page) -> None:
    """Until the answer being streamed shows its first text (the stream still running)."""
    await page.wait_for_function(
        """() => {
            const m = document.querySelector('.msg.assistant');
            return m && m.dataset.state === 'streaming' && m.querySelector('.content').textContent.length > 0;
        }""",
        timeout=TIMEOUT_MS,
    )


async def ask(page: Page, text: str, *, answers: int) -> None:
    """Type and send ``text``, then wait until the ``answers``-th answer has ended."""
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")
    last = page.locator(ASSISTANT).nth(answers - 1)
    await expect(last).not_to_have_attribute("data-state", "streaming")
    await expect(page.locator(ASSISTANT)).to_have_count(answers)


async def select_model(page: Page, model: str) -> None:
    await page.select_option("#model", model)
    await expect(page.locator("#send")).to_be_enabled()


async def shot(page: Page, path: Path) -> None:
    image = await page.screenshot(path=str(path), full_page=False)
    assert image.startswith(b"\x89PNG")
    print(f"screenshot: {path}")


async def test_markdown_renders_with_copyable_code(
    browser: Browser, page_gateway: ServerThread, tmp_path: Path
) -> None:
    async with new_probe(browser, permissions=["clipboard-read", "clipboard-write"]) as probe:
        page = probe.page
        await open_chat(page, page_gateway, "markdown")
        await ask(page, "Show me some markdown", answers=1)
        answer = page.locator(ASSISTANT)
        await expect(answer).to_have_attribute("data-state", "done")
        await expect(answer.locator(".content strong")).to_have_text("bold")
        await expect(answer.locator(".content p code")).to_have_text("code")
        await expect(answer.locator(".content li")).to_have_text(["one", "two"])
        await expect(answer.locator(".content pre code")).to_have_text("print('hi')\n")
        await expect(answer.locator(".code-bar span")).to_have_text("python")

        await answer.locator("button.copy").click()
        await expect(answer.locator("button.copy")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"

        meta = await answer.locator(".meta").text_content()
        assert meta is not None and re.fullmatch(r"markdown · \d+ tokens · \d+\.\d s", meta), meta
        detail = await answer.locator(".meta").get_attribute("title")
        assert detail is not None and re.fullmatch(r"first token after \d+ ms, \d+\.\d tokens/s", detail), detail

        await select_model(page, "normal")
        await ask(page, "And a plain answer?", answers=2)
        await shot(page, tmp_path / "desktop.png")
        probe.assert_clean()


async def test_hostile_model_output_is_inert(browser: Browser, page_gateway: ServerThread, tmp_path: Path) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        await open_chat(page, page_gateway, "hostile")
        await ask(page, "Say something nasty", answers=1)
        content = page.locator(CONTENT)
        await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "done")
        text = await content.text_content()
        assert text is not None
        # Raw HTML is shown as the words it is, never parsed.
        assert "<script>window.pwned = 1</script>" in text
        assert '<img src="x" onerror="window.pwned = 2">' in text
        assert text.endswith("done")
        inert = await page.evaluate(
            """() => {
                const all = [...document.querySelectorAll('#log *')];
                const anchors = [...document.querySelectorAll('#log a')];
                return {
                    pwned: window.pwned ?? null,
                    dangerous: all.filter(e => /^(SCRIPT|IMG|SVG|IFRAME|OBJECT|EMBED|STYLE)$/i.test(e.tagName)).length,
                    handlers: all.flatMap(e => [...e.attributes].map(a => a.name)).filter(n => n.startsWith('on')),
                    scriptLinks: anchors.filter(a => /^\\s*javascript:/i.test(a.getAttribute('href') || '')).length,
                    links: anchors.map(a => [a.textContent, a.getAttribute('href'), a.rel]),
                };
            }"""
        )
        assert inert["pwned"] is None
        assert inert["dangerous"] == 0
        assert inert["handlers"] == []
        assert inert["scriptLinks"] == 0
        # The markdown image became a plain link, so the browser fetched nothing from it.
        assert ["tracker", "http://127.0.0.1:9/pixel.png", "noopener noreferrer nofollow"] in inert["links"]
        assert not [url for url in requested if "127.0.0.1:9/" in url], requested
        for anchor in await page.locator(f"{CONTENT} a").all():  # clicking what is left runs nothing either
            await anchor.click(modifiers=["Shift"], no_wait_after=True)
        assert await page.evaluate("window.pwned ?? null") is None

        # Behind the sanitizer, the page's Content-Security-Policy: even markup that got in could not run.
        violated = await page.evaluate(
            """() => new Promise(resolve => {
                document.addEventListener('securitypolicyviolation', e => resolve(e.effectiveDirective), {once: true});
                const b = document.createElement('button');
                b.setAttribute('onclick', 'window.pwned = 6');
                document.body.append(b);
                b.click();
                setTimeout(() => resolve(null), 3000);
            })"""
        )
        assert violated == "script-src-attr"
        assert await page.evaluate("window.pwned ?? null") is None
        probe.assert_clean()


async def test_history_survives_reload_and_switching(
    browser: Browser, page_gateway: ServerThread, fake: FakeProvider
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await open_chat(page, page_gateway, "normal")
        await ask(page, "First question", answers=1)
        await page.reload()
        await expect(page.locator("#status")).to_have_text("connected")
        await expect(page.locator(".msg.user .content")).to_have_text(["First question"])
        await expect(page.locator(CONTENT)).to_have_text([FULL_REPLY])
        await expect(page.locator("#conversations .open")).to_have_text(["First question"])

        await page.click("#new-chat")
        await expect(page.locator("#empty")).to_be_visible()
        await expect(page.locator("#prompt")).to_be_focused()
        await ask(page, "Second question", answers=1)
        await expect(page.locator("#conversations .open")).to_have_text(["Second question", "First question"])

        await page.click("#menu")  # at this width the list is a drawer
        await page.locator("#conversations .open", has_text="First question").click()
        await expect(page.locator(".msg.user .content")).to_have_text(["First question"])
        await expect(page.locator("#conversations li[aria-current=true] .open")).to_have_text("First question")
        await page.reload()
        await expect(page.locator(".msg.user .content")).to_have_text(["First question"])

        await page.click("#menu")
        await page.get_by_role("button", name="Delete conversation: Second question").click()
        await expect(page.locator("#conversations .open")).to_have_text(["First question"])
        probe.assert_clean()


async def test_regenerate_asks_again_without_repeating_the_question(
    browser: Browser, page_gateway: ServerThread, fake: FakeProvider
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await open_chat(page, page_gateway, "normal")
        await ask(page, "Pick a number", answers=1)
        await page.locator(ASSISTANT).get_by_role("button", name="Regenerate: ask the model again").click()
        await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "done")
        await expect(page.locator(ASSISTANT)).to_have_count(1)
        await expect(page.locator(".msg.user")).to_have_count(1)
        sent = [r.body["messages"] for r in fake.requests]
        assert sent == [[{"role": "user", "content": "Pick a number"}]] * 2, sent
        probe.assert_clean()


async def test_edit_and_resend_replaces_the_rest(
    browser: Browser, page_gateway: ServerThread, fake: FakeProvider
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await open_chat(page, page_gateway, "normal")
        await ask(page, "Tell me about cats", answers=1)
        await ask(page, "And their whiskers?", answers=2)
        await page.locator(".msg.user").first.get_by_role("button", name="Edit this message").click()
        editor = page.get_by_label("Edit message")
        await expect(editor).to_be_focused()
        await editor.fill("Tell me about dogs")
        await page.get_by_role("button", name="Save the edit and send it").click()
        await expect(page.locator(".msg.user .content")).to_have_text(["Tell me about dogs"])
        await expect(page.locator(ASSISTANT)).to_have_count(1)
        await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "done")
        assert fake.requests[-1].body["messages"] == [{"role": "user", "content": "Tell me about dogs"}]
        probe.assert_clean()


async def test_key_field_connects_and_is_remembered(browser: Browser, keyed_gateway: ServerThread) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await page.goto(f"{keyed_gateway.base_url}/?model=normal")
        # No key: the socket is refused (1008) and the page asks for one, in one place.
        await expect(page.locator("#status")).to_have_text("key needed")
        await expect(page.locator("#key-panel")).to_be_visible()
        await expect(page.locator("#key-note")).to_have_text(
            "This gateway needs a key: enter the gateway key you were given."
        )
        await expect(page.get_by_role("textbox", name="Gateway key")).to_be_focused()
        await expect(page.locator("#send")).to_be_disabled()
        # The model picker says why it is empty.
        await expect(page.locator("#model option")).to_have_text(["Enter a key to see the models"])

        # A wrong key is told apart from a missing one.
        await page.get_by_role("textbox", name="Gateway key").fill("wrong")
        await page.get_by_role("button", name="Save", exact=True).click()
        await expect(page.locator("#status")).to_have_text("key refused")
        await expect(page.locator("#key-note")).to_contain_text("The gateway refused the key saved in this browser")
        await expect(page.locator("#model option")).to_have_text(["Key refused: no models"])
        await expect(page.locator("#send")).to_be_disabled()

        await page.get_by_role("textbox", name="Gateway key").fill(GATEWAY_KEY)
        await page.get_by_role("button", name="Save", exact=True).click()
        await expect(page.locator("#status")).to_have_text("connected")
        await expect(page.locator("#key-panel")).to_be_hidden()
        await expect(page.locator("#model")).to_have_value("normal")
        await ask(page, "Hello with a key", answers=1)
        await expect(page.locator(CONTENT)).to_have_text(FULL_REPLY)

        await page.reload()  # remembered in this browser
        await expect(page.locator("#status")).to_have_text("connected")
        assert await page.evaluate("localStorage.getItem('chat-gateway.key')") == GATEWAY_KEY
        # The two refused attempts above are the only failures: a 401 for /v1/models without a key.
        probe.statuses = [(s, u) for s, u in probe.statuses if not (s == 401 and u.endswith("/v1/models"))]
        probe.assert_clean()


async def test_key_from_the_address_is_kept_and_hidden(browser: Browser, keyed_gateway: ServerThread) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await page.goto(f"{keyed_gateway.base_url}/?model=normal&key={GATEWAY_KEY}")
        await expect(page.locator("#status")).to_have_text("connected")
        assert page.url == f"{keyed_gateway.base_url}/?model=normal"  # out of the history and the address bar
        assert await page.evaluate("localStorage.getItem('chat-gateway.key')") == GATEWAY_KEY
        await ask(page, "Hello", answers=1)
        await expect(page.locator(CONTENT)).to_have_text(FULL_REPLY)
        probe.assert_clean()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("no-such-model", "Error 404 (model_not_found): "),
        ("unauthorized", "Error 502 (upstream_authentication): "),
    ],
)
async def test_an_error_is_one_message_in_the_answers_place(
    browser: Browser, page_gateway: ServerThread, model: str, expected: str
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await open_chat(page, page_gateway, model)
        await ask(page, "Hello?", answers=1)
        answer = page.locator(ASSISTANT)
        await expect(answer).to_have_attribute("data-state", "error")
        await expect(answer).to_have_attribute("role", "alert")
        text = await answer.locator(".content").text_content()
        assert text is not None and text.startswith(expected), text
        await expect(page.locator(".notice")).to_have_count(0)  # nothing else on the page says it again
        await expect(page.locator(".msg")).to_have_count(2)
        await expect(answer.get_by_role("button", name="Regenerate: ask the model again")).to_be_visible()
        await expect(page.locator("#send")).to_be_enabled()
        probe.assert_clean()


async def test_phone_layout(browser: Browser, page_gateway: ServerThread, tmp_path: Path) -> None:
    phone = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
    async with new_probe(browser, **phone) as probe:
        page = probe.page
        await open_chat(page, page_gateway, "markdown")
        await ask(page, "Show me some markdown", answers=1)
        layout = await page.evaluate(
            """() => {
                const header = document.querySelector('header');
                const shown = [...header.children].filter(e => e.getClientRects().length);
                const tops = shown.map(e => {
                    const box = e.getBoundingClientRect();
                    return Math.round(box.top + box.height / 2);
                });
                const prompt = document.querySelector('#prompt');
                const style = getComputedStyle(prompt);
                const ctx = document.createElement('canvas').getContext('2d');
                ctx.font = `${style.fontSize} ${style.fontFamily}`;
                const room = prompt.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
                return {
                    headerHeight: header.getBoundingClientRect().height,
                    centres: [...new Set(tops)],
                    headerOverflow: header.scrollWidth - header.clientWidth,
                    pageOverflow: document.documentElement.scrollWidth - window.innerWidth,
                    placeholderFits: ctx.measureText(prompt.placeholder).width <= room,
                    titleTruncated: (h1 => h1.offsetWidth > 2 && h1.scrollWidth > h1.clientWidth)(
                        document.querySelector('h1')),  // shown whole, or (phone) for screen readers only
                };
            }"""
        )
        await shot(page, tmp_path / "phone.png")
        assert layout["headerHeight"] < 60, layout  # one row
        assert max(layout["centres"]) - min(layout["centres"]) <= 2, layout
        assert layout["headerOverflow"] <= 0 and layout["pageOverflow"] <= 0, layout
        assert layout["placeholderFits"], layout
        assert not layout["titleTruncated"], layout

        await page.click("#menu")
        await expect(page.locator("#sidebar")).to_be_visible()
        await expect(page.locator("#menu")).to_have_attribute("aria-expanded", "true")
        await page.keyboard.press("Escape")
        await expect(page.locator("#sidebar")).to_be_hidden()
        await expect(page.locator("#menu")).to_be_focused()
        probe.assert_clean()


async def test_dark_theme(browser: Browser, page_gateway: ServerThread, tmp_path: Path) -> None:
    async with new_probe(browser, color_scheme="dark", viewport={"width": 1100, "height": 700}) as probe:
        page = probe.page
        await open_chat(page, page_gateway, "markdown")
        for answers, (model, question) in enumerate(SCREENSHOT_CONVERSATION, start=1):
            await select_model(page, model)
            await ask(page, question, answers=answers)
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(v) for v in background.removeprefix("rgb(").rstrip(")").split(",")[:3])
        assert max(red, green, blue) < 60, background
        await expect(page.locator("#sidebar")).to_be_visible()  # wide enough for the list beside the chat
        await shot(page, tmp_path / "dark.png")
        probe.assert_clean()


async def test_keyboard_and_screen_reader_basics(browser: Browser, page_gateway: ServerThread) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        await open_chat(page, page_gateway, "slow_gap")
        await expect(page.locator("#prompt")).to_be_focused()
        unnamed = await page.evaluate(
            """() => {
                const name = (e) => (e.getAttribute('aria-label') || e.textContent || '').trim()
                    || [...(e.labels || [])].map(l => l.textContent.trim()).join('');
                return [...document.querySelectorAll('button, select, textarea, input')]
                    .filter(e => e.getClientRects().length || e.closest('[hidden]'))
                    .filter(e => !name(e)).map(e => e.outerHTML.slice(0, 80));
            }"""
        )
        assert unnamed == []
        await page.fill("#prompt", "Tell me something slowly")
        await page.keyboard.press("Enter")
        content = page.locator(CONTENT)
        await expect(content).to_have_attribute("aria-live", "polite")
        await expect(content).to_have_attribute("aria-busy", "true")  # read once, when complete
        await expect(content).not_to_be_empty()
        await page.keyboard.press("Escape")  # stops the answer
        await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "cancelled")
        await expect(content).to_have_attribute("aria-busy", "false")
        await expect(page.locator(ASSISTANT).locator(".badge")).to_have_text("stopped")
        probe.assert_clean()


async def test_api_reference_renders_offline(browser: Browser, page_gateway: ServerThread) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        elsewhere: list[str] = []

        async def only_the_gateway(route: Route) -> None:
            if route.request.url.startswith(page_gateway.base_url):
                await route.continue_()
            else:  # what a machine without internet would get
                elsewhere.append(route.request.url)
                await route.abort()

        await page.route("**/*", only_the_gateway)
        await page.goto(f"{page_gateway.base_url}/schema/swagger")
        await expect(page.locator(".opblock").first).to_be_visible()
        assert await page.locator(".opblock").count() >= 8
        await page.locator(".opblock-summary", has_text="/api/models/search").first.click()
        await expect(page.locator(".parameters-col_name", has_text="min_context")).to_be_visible()
        assert elsewhere == []
        probe.assert_clean()


async def test_a_key_in_a_link_never_replaces_the_stored_one_unasked(
    browser: Browser, keyed_gateway: ServerThread
) -> None:
    """A link carrying someone else's key must not switch this browser to it silently."""
    async with new_probe(browser) as probe:
        page = probe.page
        await page.goto(f"{keyed_gateway.base_url}/?model=normal&key={GATEWAY_KEY}")
        await expect(page.locator("#status")).to_have_text("connected")
        await page.goto(f"{keyed_gateway.base_url}/?model=normal&key=someone-elses-key")
        assert page.url == f"{keyed_gateway.base_url}/?model=normal"  # out of the address bar all the same
        await expect(page.locator("#key-panel")).to_be_visible()
        await expect(page.locator("#key-note")).to_contain_text("another gateway key")
        await expect(page.get_by_role("textbox", name="Gateway key")).to_have_value("someone-elses-key")
        assert await page.evaluate("localStorage.getItem('chat-gateway.key')") == GATEWAY_KEY
        await expect(page.locator("#status")).to_have_text("connected")  # still with the stored key
        await page.keyboard.press("Escape")  # dismissed: the stored key stays
        await expect(page.locator("#key-panel")).to_be_hidden()
        await page.reload()
        await expect(page.locator("#status")).to_have_text("connected")
        assert await page.evaluate("localStorage.getItem('chat-gateway.key')") == GATEWAY_KEY
        # Saved on purpose, the offered key is taken (and refused here: it is not a key of this gateway).
        await page.goto(f"{keyed_gateway.base_url}/?model=normal&key=someone-elses-key")
        await page.get_by_role("button", name="Save", exact=True).click()
        await expect(page.locator("#status")).to_have_text(
            "key refused"
        )  # a wrong key is told apart from a missing one
        assert await page.evaluate("localStorage.getItem('chat-gateway.key')") == "someone-elses-key"
        probe.statuses = [(s, u) for s, u in probe.statuses if not (s == 401 and u.endswith("/v1/models"))]
        probe.assert_clean()


async def test_api_reference_runs_under_its_content_security_policy(
    browser: Browser, page_gateway: ServerThread
) -> None:
    async with new_probe(browser) as probe:
        page = probe.page
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        response = await page.goto(f"{page_gateway.base_url}/schema/swagger")
        assert response is not None
        assert "frame-ancestors 'none'" in (await response.all_headers())["content-security-policy"]
        await expect(page.locator(".opblock").first).to_be_visible()
        assert refused == []
        probe.assert_clean()
