"""The console page in a real headless Chromium: sending, live events and resumes over WebSocket and SSE."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tests.support.client import get_json, post_message
from tests.support.db import wait_rows
from tests.support.isolation import Isolated
from tests.support.worker import Worker, running

RECOVERY_MAX = 4  # small, so that a longer absence shows the not-recovered path and its gap
WAIT_MS = 20_000  # the first message waits for the new worker's partitions to be assigned
NAMES = {"ws": "WebSocket", "sse": "SSE"}
OPEN = {"ws": "connected", "sse": "open"}
SENT = {"ws": "Sent over the socket as event", "sse": "Sent over HTTP as event"}


@pytest.fixture
async def worker(iso: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    env = iso.env(SOMA_STREAM_RECOVERY_MAX=str(RECOVERY_MAX))
    async with running(env, artifacts / "logs" / f"console-{iso.tag}.log") as worker:
        yield worker


class Console:
    """The page as its user sees it: labelled controls, the status line, the event list."""

    def __init__(self, page: Page, worker: Worker, iso: Isolated) -> None:
        self.page = page
        self.worker = worker
        self.iso = iso
        self.status = page.get_by_role("status")
        self.rows = page.locator("#events li")
        self.stream_urls: list[str] = []
        page.on("websocket", lambda ws: self.stream_urls.append(ws.url))
        page.on("request", lambda r: self.stream_urls.append(r.url) if "/events?" in r.url else None)

    async def click(self, name: str) -> None:
        await self.page.get_by_role("button", name=name, exact=True).click()

    async def session(self) -> str:
        return await self.page.get_by_label("Session", exact=True).input_value()

    async def type_message(self, text: str) -> None:
        await self.page.get_by_label("Message", exact=True).fill(text)

    async def shown(self) -> list[tuple[str, ...]]:
        """Each row as (seq, type, role, text); a gap row as ("gap", its text)."""
        found: list[list[str]] = await self.rows.evaluate_all(
            """rows => rows.map(r => r.dataset.seq === undefined
                ? ["gap", r.textContent]
                : [...r.children].map(c => c.textContent))"""
        )
        return [tuple(row) for row in found]

    def row(self, seq: int) -> Locator:
        return self.page.locator(f'#events li[data-seq="{seq}"]')

    def stream_url(self, transport: str, session: str, after: int) -> str:
        if transport == "ws":
            return f"ws://127.0.0.1:{self.worker.port}/v1/session/{session}/stream?after={after}"
        return f"{self.worker.url}/v1/session/{session}/events?after={after}"

    async def post(self, session: str, *texts: str) -> None:
        for text in texts:
            status, answer = await post_message(self.worker.url, {"session_id": session, "message": text})
            assert status == 202, answer

    async def stored(self, session: str, count: int) -> None:
        sql = "SELECT 1 FROM session_events WHERE session_id = %s"
        await wait_rows(self.iso.settings.postgres_dsn, sql, (session,), count)


async def converse(console: Console, transport: str) -> str:
    """A new session: two messages typed (Send, then Enter), an absence with three missed, a resume."""
    name = NAMES[transport]
    await console.page.get_by_label(name, exact=True).check()
    await console.click("New session")
    session = await console.session()
    uuid.UUID(session)
    await expect(console.status).to_have_text(
        f"{name} · {OPEN[transport]} · recovered: yes, replayed 0 (after 0, head 0) · last seq 0", timeout=WAIT_MS
    )

    # markup in a message is shown as text, never parsed
    first = f"<b>hello</b> over {name} & co"
    await console.type_message(first)
    await console.click("Send")
    await expect(console.row(1)).to_be_visible(timeout=WAIT_MS)
    await expect(console.page.get_by_text(SENT[transport])).to_be_visible()
    await console.type_message("second, by Enter")
    await console.page.get_by_label("Message", exact=True).press("Enter")
    await expect(console.row(2)).to_be_visible()
    assert await console.page.locator("#events b").count() == 0

    await console.click("Disconnect")
    await expect(console.status).to_contain_text(f"{name} · disconnected")
    await console.post(session, "missed 1", "missed 2", "missed 3")
    await console.stored(session, 5)
    await console.click("Reconnect")
    await expect(console.status).to_have_text(
        f"{name} · {OPEN[transport]} · recovered: yes, replayed 3 (after 2, head 5) · last seq 5"
    )
    assert await console.shown() == [
        ("1", "user.message", "user", first),
        ("2", "user.message", "user", "second, by Enter"),
        ("3", "user.message", "user", "missed 1"),
        ("4", "user.message", "user", "missed 2"),
        ("5", "user.message", "user", "missed 3"),
    ]
    # opened from the start, then resumed after the last seq seen
    assert console.stream_urls[-2:] == [console.stream_url(transport, session, after) for after in (0, 2)]
    return session


# the first run on a fresh machine apt-installs Chromium inside the test's setup
@pytest.mark.timeout(600)
async def test_console_over_both_transports(browser: Browser, worker: Worker, iso: Isolated, artifacts: Path) -> None:
    page = await browser.new_page(viewport={"width": 1100, "height": 860})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = await page.goto(worker.url + "/")
    assert response is not None and response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    # no inline script: the page works under its own policy (a violation would be a console error below)
    assert "script-src 'self';" in response.headers["content-security-policy"]
    await expect(page).to_have_title("SomaAgent 01 console")
    assert await get_json(worker.url, "/static/missing.js") == (
        404,
        {"error": {"code": "not_found", "message": "no static file missing.js"}},
    )
    console = Console(page, worker, iso)

    session = await converse(console, "ws")

    # the other transport on the same session continues after the last seq: nothing twice
    await page.get_by_label("SSE", exact=True).check()
    await expect(console.status).to_have_text("SSE · open · recovered: yes, replayed 0 (after 5, head 5) · last seq 5")
    await console.post(session, "live over SSE")
    await expect(console.row(6)).to_contain_text("live over SSE")
    assert [row[0] for row in await console.shown()] == ["1", "2", "3", "4", "5", "6"]

    session = await converse(console, "sse")

    # away longer than SOMA_STREAM_RECOVERY_MAX: the page says so and marks what it will not get
    await console.click("Disconnect")
    await console.post(session, *(f"lost {n}" for n in range(RECOVERY_MAX + 1)))
    await console.stored(session, 5 + RECOVERY_MAX + 1)
    await console.click("Reconnect")
    await expect(console.status).to_have_text("SSE · open · recovered: no, replayed 0 (after 5, head 10) · last seq 10")
    await console.post(session, "back live")
    await expect(console.row(11)).to_contain_text("back live")
    assert [row[:2] for row in await console.shown()][4:] == [
        ("5", "user.message"),
        ("gap", "seq 6\N{EN DASH}10 missing"),
        ("11", "user.message"),
    ]

    await console.type_message("what the screenshot shows")
    await console.click("Send")
    await expect(console.row(12)).to_be_visible()
    await asyncio.to_thread((artifacts / "screenshots").mkdir, exist_ok=True)
    await page.screenshot(path=artifacts / "screenshots" / "console.png", full_page=True)
    assert problems == []


@pytest.fixture
async def secured(iso: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    env = iso.env(
        SOMA_AUTH_REQUIRED="1", SOMA_JWT_SECRET="console-test-secret-of-32-bytes-at-least", SOMA_DEV_TOKENS="1"
    )
    async with running(env, artifacts / "logs" / f"console-auth-{iso.tag}.log") as worker:
        yield worker


@pytest.mark.timeout(600)
async def test_console_with_authentication_on(browser: Browser, secured: Worker, iso: Isolated) -> None:
    page = await browser.new_page(viewport={"width": 1100, "height": 860})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(secured.url + "/")
    console = Console(page, secured, iso)

    # without a token the page says what is wrong instead of failing silently
    await console.click("New session")
    await expect(page.get_by_text("unauthenticated: this endpoint needs a bearer token")).to_be_visible(timeout=WAIT_MS)

    await console.click("Get a dev token")
    await expect(page.get_by_text("Dev token for tenant dev")).to_be_visible()
    token = await page.get_by_label("Token", exact=True).input_value()
    assert token.count(".") == 2
    await expect(console.status).to_contain_text("WebSocket · connected", timeout=WAIT_MS)
    session = await console.session()
    await console.type_message("typed with a token")
    await console.click("Send")
    await expect(console.row(1)).to_contain_text("typed with a token", timeout=WAIT_MS)

    await page.get_by_label("SSE", exact=True).check()
    await expect(console.status).to_have_text("SSE · open · recovered: yes, replayed 0 (after 1, head 1) · last seq 1")
    await console.type_message("posted over HTTP with the token")
    await console.click("Send")
    await expect(console.row(2)).to_contain_text("posted over HTTP with the token")
    # streams were opened with single-use tickets, never with the token in a URL
    streams = [url for url in console.stream_urls if session in url]
    with_token = streams[next(n for n, url in enumerate(streams) if "ticket=" in url) :]
    assert len(with_token) >= 2 and all("ticket=" in url for url in with_token), streams
    assert not any(token in url for url in console.stream_urls)
    # the messages carry the dev token's tenant
    _, stored = await get_json_with(secured.url, f"/v1/session/{session}", token)
    assert stored["tenant"] == "dev"
    assert problems == []


async def get_json_with(base: str, path: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base + path, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()
