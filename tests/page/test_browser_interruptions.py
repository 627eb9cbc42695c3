"""The chat page as a newcomer meets it, and under interruption, in a real headless Chromium.

The welcome state and its example prompts, the demo models' answers, the composer lined up with the
messages, message actions on hover (always on touch), an answer lost to a server restart (a real
``python -m app`` killed and started again), and a reload mid-answer (resumed when the server keeps
the stream going, kept with a note when it does not). Screenshots (desktop, phone, dark) go to
/tmp/shots, outside the repository.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from app.config.settings import load_settings, settings_from_dict
from tests.config.test_cli import SLOW_S, Gateway, free_port
from tests.conftest import TEST_STREAMING, ServerThread, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider
from tests.page.test_browser import ASSISTANT, CONTENT, TIMEOUT_MS, browser, new_probe, open_chat, send_message

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with test_browser

SHOTS = Path("/tmp/shots")
DESKTOP = {"viewport": {"width": 1100, "height": 700}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
WORDS = Behaviour(content=[f" w{i}" for i in range(40)], gap_s=0.1)  # about 4 s


async def shot(page: Page, name: str) -> None:
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    image = await page.screenshot(path=str(SHOTS / name), full_page=False)
    assert image.startswith(b"\x89PNG")
    print(f"screenshot: {SHOTS / name}")


@pytest.fixture(scope="module")
def shipped() -> Iterator[ServerThread]:
    """The shipped configuration: the three demo models, nothing else."""
    server = ServerThread(load_settings(environ={})).start()
    yield server
    server.stop()


def words_gateway(fake: FakeProvider, grace_s: float) -> ServerThread:
    fake.set_behaviour("words", WORDS)
    data = settings_dict(fake.base_url, streaming={**TEST_STREAMING, "resume_ttl_s": 30, "detach_grace_s": grace_s})
    data["models"]["deployments"].append({"name": "words", "litellm_model": "openai/words", "api_base": fake.base_url})
    return ServerThread(settings_from_dict(data, environ={})).start()


@pytest.fixture(scope="module")
def detaching(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    server = words_gateway(fake_provider, grace_s=10)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cancelling(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    server = words_gateway(fake_provider, grace_s=0)
    yield server
    server.stop()


async def welcome(page: Page, base_url: str) -> None:
    await page.goto(base_url)
    await expect(page.locator("#status")).to_have_text("connected", timeout=TIMEOUT_MS)
    await expect(page.locator("#examples button")).to_have_count(3)


async def streaming_with(page: Page, text: str) -> str:
    """Wait until the streaming answer contains ``text``; return what it shows then."""
    await page.wait_for_function(
        """(text) => {
            const m = document.querySelector('.msg.assistant');
            return m && m.dataset.state === 'streaming' && m.querySelector('.content').textContent.includes(text);
        }""",
        arg=text,
        timeout=TIMEOUT_MS * 2,
    )
    return str(await page.locator(CONTENT).text_content())


async def colours(page: Page) -> dict[str, Any]:
    return dict(
        await page.evaluate(
            """() => {
                const m = document.querySelector('.msg.assistant');
                const css = (e) => getComputedStyle(e);
                return {
                    body: css(document.body).color,
                    content: css(m.querySelector('.content')).color,
                    note: css(m.querySelector('.note')).color,
                    bubble: css(m).backgroundColor,
                    noteBackground: css(m.querySelector('.note')).backgroundColor,
                };
            }"""
        )
    )


# ---- first contact ---------------------------------------------------------------------------


async def test_welcome_examples_show_what_the_demo_models_do(browser: Browser, shipped: ServerThread) -> None:
    async with new_probe(browser, **DESKTOP) as probe:
        page = probe.page
        await welcome(page, shipped.base_url)
        await expect(page.locator("#empty h2")).to_have_text("Start a conversation")
        await expect(page.locator("#examples button")).to_have_text(
            [
                "Show me markdowna heading, a list, code and a table (demo)",
                "A long answerpress Stop, or reload mid-answer (demo-slow)",
                "A provider failurean answer that breaks off (demo-error)",
            ]
        )
        await shot(page, "desktop-welcome.png")

        # Markdown, rendered: a heading, a list, code and a table built from the prompt.
        await page.get_by_role("button", name="Example: Show me what you can render").click()
        answer = page.locator(ASSISTANT)
        await expect(answer).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS * 2)
        await expect(page.locator("#model")).to_have_value("demo")
        await expect(answer.locator(".content h2")).to_have_text("A demo answer")
        await expect(answer.locator(".content ol li")).to_have_count(3)
        await expect(answer.locator(".code-bar span")).to_have_text("python")
        await expect(answer.locator(".content table tbody tr").first).to_contain_text("Show")
        await shot(page, "desktop-markdown.png")

        # demo-slow: Stop ends it at once and keeps what came.
        await page.click("#new-chat")
        await page.get_by_role("button", name="Example: Tell me a long story, slowly").click()
        await streaming_with(page, "Paragraph 1")
        await page.click("#stop")
        await expect(answer).to_have_attribute("data-state", "cancelled")
        await expect(answer.locator(".badge")).to_have_text("stopped")

        # demo-error: the words that came stay, the failure is a note in words below them.
        await page.click("#new-chat")
        await page.get_by_role("button", name="Example: Start answering, then fail midway").click()
        await expect(answer).to_have_attribute("data-state", "error", timeout=TIMEOUT_MS)
        await expect(answer).to_have_attribute("data-partial", "true")
        await expect(answer.locator(".content")).to_contain_text("This answer starts well")
        await expect(answer.locator(".note")).to_have_text(
            "The provider stopped answering midway: its connection broke off."
        )
        await expect(answer.get_by_role("button", name="Regenerate: ask the model again")).to_be_in_viewport()
        probe.assert_clean()


async def test_composer_lines_up_with_the_messages(browser: Browser, shipped: ServerThread) -> None:
    async with new_probe(browser, **DESKTOP) as probe:
        page = probe.page
        await welcome(page, shipped.base_url)
        await expect(page.locator("#sidebar")).to_be_visible()  # the column is beside the list
        edges = await page.evaluate(
            """() => {
                const box = (s) => document.querySelector(s).getBoundingClientRect();
                const log = box('#log'), composer = box('#composer'), main = box('main');
                return {log: [log.left, log.right], composer: [composer.left, composer.right],
                        main: [main.left, main.right]};
            }"""
        )
        assert abs(edges["log"][0] - edges["composer"][0]) <= 1, edges
        assert abs(edges["log"][1] - edges["composer"][1]) <= 1, edges
        assert edges["main"][0] >= 250, edges  # not centred on the window under the sidebar
        probe.assert_clean()


async def opacity(page: Page, selector: str) -> float:
    return float(await page.locator(selector).first.evaluate("(e) => getComputedStyle(e).opacity"))


async def test_message_actions_show_on_hover_and_always_on_touch(browser: Browser, shipped: ServerThread) -> None:
    async with new_probe(browser, **DESKTOP) as probe:
        page = probe.page
        await open_chat(page, shipped, "demo")
        for answers, question in enumerate(("first", "second"), start=1):
            await page.fill("#prompt", question)
            await page.press("#prompt", "Enter")
            await expect(page.locator(ASSISTANT).nth(answers - 1)).to_have_attribute("data-state", "done")
        first_user = ".msg.user >> nth=0"
        await page.mouse.move(5, 5)
        await expect(page.locator(f"{first_user} >> .actions").first).to_have_css("opacity", "0")
        await expect(page.locator(".msg.assistant >> nth=0 >> .meta").first).to_have_css("opacity", "0")
        # The last answer's Regenerate is always in view.
        await expect(page.locator(".msg.assistant >> nth=1 >> .actions").first).to_have_css("opacity", "1")
        await page.hover(first_user)
        await expect(page.locator(f"{first_user} >> .actions").first).to_have_css("opacity", "1")
        # Keyboard users reach them too: focus shows them.
        await page.mouse.move(5, 5)
        await page.locator(first_user).get_by_role("button", name="Edit this message").focus()
        await expect(page.locator(f"{first_user} >> .actions").first).to_have_css("opacity", "1")
        probe.assert_clean()

    async with new_probe(browser, **PHONE) as probe:
        page = probe.page
        await welcome(page, shipped.base_url)
        await shot(page, "phone-welcome.png")
        await page.get_by_role("button", name="Example: Show me what you can render").click()
        await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS * 2)
        await page.fill("#prompt", "and again")
        await page.press("#prompt", "Enter")
        await expect(page.locator(ASSISTANT).nth(1)).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS * 2)
        # A touch screen cannot hover: every message's actions are shown.
        assert await opacity(page, ".msg.user >> nth=0 >> .actions") == 1
        assert await opacity(page, ".msg.assistant >> nth=0 >> .meta") == 1
        edges = await page.evaluate(
            """() => [document.querySelector('#log'), document.querySelector('#composer')]
                .map(e => Math.round(e.getBoundingClientRect().left))"""
        )
        assert abs(edges[0] - edges[1]) <= 8, edges
        await page.locator(ASSISTANT).first.scroll_into_view_if_needed()
        await shot(page, "phone-markdown.png")
        probe.assert_clean()


async def test_dark_theme_renders_answers_and_failures(browser: Browser, shipped: ServerThread) -> None:
    async with new_probe(browser, color_scheme="dark", **DESKTOP) as probe:
        page = probe.page
        await welcome(page, shipped.base_url)
        await shot(page, "dark-welcome.png")
        await page.get_by_role("button", name="Example: Show me what you can render").click()
        await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS * 2)
        await page.select_option("#model", "demo-error")
        await page.fill("#prompt", "now fail midway")
        await page.press("#prompt", "Enter")
        failed = page.locator(ASSISTANT).nth(1)
        await expect(failed).to_have_attribute("data-state", "error", timeout=TIMEOUT_MS)
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert max(int(v) for v in background.removeprefix("rgb(").rstrip(")").split(",")[:3]) < 60, background
        await shot(page, "dark-failure.png")
        probe.assert_clean()


# ---- interruptions ---------------------------------------------------------------------------


async def test_an_answer_lost_to_a_server_restart_says_so_in_words(browser: Browser) -> None:
    port = free_port()
    env = {"CHAT_SERVER__PORT": str(port), "CHAT_SERVER__DRAIN_S": "1"}
    first = Gateway(env)
    second: Gateway | None = None
    try:
        first.wait_for("ready in", SLOW_S)
        async with new_probe(browser, **DESKTOP) as probe:
            page = probe.page
            await open_chat(page, _Base(f"http://127.0.0.1:{port}"), "demo-slow")  # type: ignore[arg-type]
            await send_message(page, "Tell me a long story")
            before = await streaming_with(page, "Paragraph 1")
            first.proc.kill()  # the server dies mid-answer: no drain, no goodbye
            first.proc.wait(30)
            await expect(page.locator("#status")).to_have_text("reconnecting…")
            second = Gateway(env)
            second.wait_for("ready in", SLOW_S)

            answer = page.locator(ASSISTANT)
            await expect(answer).to_have_attribute("data-state", "error", timeout=SLOW_S * 1000)
            await expect(answer.locator(".note")).to_have_text("The server restarted; this answer was lost.")
            await expect(answer.locator(".note")).to_have_attribute(
                "title", re.compile(r"^Error 404 \(stream_not_found\): ")
            )
            text = str(await answer.locator(".content").text_content())
            assert text.startswith(before.rstrip("▍")), (before, text)  # the words that came are kept
            seen = await colours(page)
            assert seen["content"] == seen["body"], seen  # in the normal colour, not the error's
            assert seen["note"] != seen["body"], seen
            await expect(answer.get_by_role("button", name="Regenerate: ask the model again")).to_be_in_viewport()
            await expect(page.locator("#status")).to_have_text("connected")
            await shot(page, "desktop-server-restarted.png")

            await answer.get_by_role("button", name="Regenerate: ask the model again").click()
            await streaming_with(page, "Paragraph 1")  # the new server answers
            await page.click("#stop")
            await expect(page.locator(ASSISTANT)).to_have_attribute("data-state", "cancelled")
            # The page's own view of the failure: one 404 on the socket, no failed HTTP request.
            probe.assert_clean()
    finally:
        for gateway in (first, second):
            if gateway is not None and gateway.proc.poll() is None:
                gateway.proc.kill()
                gateway.proc.wait(30)


class _Base:
    """What open_chat needs of a server: its base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


async def test_a_reload_mid_answer_resumes_it(browser: Browser, detaching: ServerThread, fake: FakeProvider) -> None:
    async with new_probe(browser, **DESKTOP) as probe:
        page = probe.page
        await open_chat(page, detaching, "words")
        await send_message(page, "Count for me")
        await streaming_with(page, " w5")
        await page.reload()
        answer = page.locator(ASSISTANT)
        await expect(answer).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS * 2)
        # Every word once: what the page had kept, then the rest from the stream's log and the live stream.
        await expect(answer.locator(".content")).to_have_text("".join(WORDS.content).strip())
        await expect(answer.locator(".note")).to_be_empty()
        probe.assert_clean()
    assert fake.calls("words") == 1  # resumed, not asked again


async def test_a_reload_mid_answer_keeps_the_words_when_the_stream_ended(
    browser: Browser, cancelling: ServerThread, fake: FakeProvider
) -> None:
    # With streaming.detach_grace_s = 0 (the default) a page that goes away cancels its answer: after
    # the reload the log's words are shown, and a note says why there are no more.
    async with new_probe(browser, **DESKTOP) as probe:
        page = probe.page
        await open_chat(page, cancelling, "words")
        await send_message(page, "Count for me")
        before = await streaming_with(page, " w5")
        await page.reload()
        answer = page.locator(ASSISTANT)
        await expect(answer).to_have_attribute("data-state", "error", timeout=TIMEOUT_MS)
        await expect(answer).to_have_attribute("data-partial", "true")
        await expect(answer.locator(".note")).to_contain_text("This answer was stopped before it finished")
        text = str(await answer.locator(".content").text_content())
        assert text.strip().startswith(before.strip()) and len(text) < len("".join(WORDS.content)), (before, text)
        await expect(answer.get_by_role("button", name="Regenerate: ask the model again")).to_be_in_viewport()
        probe.assert_clean()
    assert fake.calls("words") == 1
