"""The dashboard in headless Chromium (Debian's, driven by Playwright) against a running node."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import CollectorFactory
from tests.events import raw_event, topic
from tests.gateway_support import AUTH, TOKEN, GatewayNode, gateway_node

__all__ = ["gateway_node"]

CHROMIUM = os.environ.get("GIBSEY_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = Path(CHROMIUM).exists()
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def _open(browser: Browser, gw: GatewayNode) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(gw.url + "/")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=15_000)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
    assert not errors, errors
    return page


async def test_the_dial_shows_live_on_the_page(
    gateway_node: GatewayNode,
    browser: Browser,
    collector_factory: CollectorFactory,
    tmp_path: Path,
) -> None:
    gw = gateway_node
    page = await _open(browser, gw)
    await expect(page.locator("#node-id")).to_have_text(gw.node.node_id)

    # 1. A dial on the broker (the Pico, `gibsey dial`) turns: the page follows without reloading.
    col = await collector_factory(gw.broker.port)
    await col.publish(
        topic(gw.node.node_id, "glyph/rotated"),
        raw_event(gw.node.node_id, "glyph/rotated", {"symbol": 1, "rotation": 3}),
    )
    await expect(page.locator("#glyph-slug")).to_have_text("london-fox", timeout=10_000)
    await expect(page.locator("#glyph-rotation")).to_have_text("dream")
    await expect(page.locator("#glyph")).to_have_attribute("data-rotation", "3")
    await expect(page.locator("#glyph-ritual")).to_contain_text("ritual: program", timeout=10_000)
    await expect(page.locator("#events li[data-kind='glyph/rotated']").first).to_be_visible()

    # 2. POST /api/glyph/rotate from elsewhere shows too.
    r = await gw.http.post("/api/glyph/rotate", json={"symbol": 2, "rotation": 1}, headers=AUTH)
    assert r.status_code == 202
    await expect(page.locator("#glyph-slug")).to_have_text("glyph-marrow", timeout=10_000)
    await expect(page.locator("#glyph-rotation")).to_have_text("write")

    # 3. The page's own virtual dial: without the token it is refused, with it the glyph turns.
    await page.select_option("#dial-symbol", "5")
    await page.click("button[data-rotation='2']")
    await expect(page.locator("#dial-result")).to_contain_text("refused", timeout=10_000)
    await expect(page.locator("#glyph-slug")).to_have_text("glyph-marrow")
    await page.fill("#token", TOKEN)
    await page.click("button[data-rotation='2']")
    await expect(page.locator("#glyph-slug")).to_have_text("oren-progresso", timeout=10_000)
    await expect(page.locator("#glyph-rotation")).to_have_text("remember")
    await expect(page.locator("#dial-result")).to_contain_text("turned")
    await expect(page.locator("#balances")).to_contain_text("dashboard", timeout=10_000)
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)


async def test_persona_chat_streams_into_the_page(
    gateway_node: GatewayNode, browser: Browser
) -> None:
    gw = gateway_node
    assert gw.gateway.web.agents_running()  # every node runs its agents (the model is installed)
    page = await _open(browser, gw)
    await page.fill("#token", TOKEN)
    await page.select_option("#chat-persona", "london-fox")
    await page.fill("#chat-prompt", "Where are we?")
    await page.click("#chat-send")
    answer = page.locator("#chat-log .a").first
    await expect(answer).to_have_attribute("data-state", "done", timeout=90_000)
    assert (await answer.text_content() or "").strip()
    await expect(page.locator("#events li[data-kind='agent/emit']").first).to_be_visible()
