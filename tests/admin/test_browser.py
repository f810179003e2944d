"""A real browser through the admin console: Debian's headless Chromium, driven by Playwright.

alice (an administrator) signs in, approves the held removals, retries a
failed delivery, and looks a user up with the keyboard; bob gets the 403
page. Screenshots of every console page go to ``test-artifacts/`` at the
repository root (``admin-*.png``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.admin.conftest import Console
from tests.sso.stack import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]


async def _sign_in(page, user: str) -> None:
    await page.get_by_label("Username or email").fill(user)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()


async def test_an_admin_decides_retries_and_looks_up_and_bob_is_refused(serve, console: Console):
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    await serve()
    world = console.world
    base = world.base_url
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(90_000)  # 2 cores shared by many test runs
            page = await context.new_page()
            messages: list[str] = []
            page.on("console", lambda msg: messages.append(msg.text))

            # Not signed in: sign-in first, then back to the console.
            await page.goto(f"{base}/admin")
            assert "/login" in page.url
            await _sign_in(page, "alice")
            await page.wait_for_url(f"{base}/admin")
            # The portal links the console for administrators only.
            await page.goto(f"{base}/")
            await page.get_by_role("link", name="Admin console").click()
            await page.wait_for_url(f"{base}/admin")
            await page.screenshot(path=ARTIFACTS / "admin-1-overview.png", full_page=True)
            row = page.get_by_role("row", name="wiki")
            assert "removals held" in await row.inner_text()

            # Held removals: approve them all (the page's hold, exactly).
            await page.get_by_role("link", name="Held removals").click()
            await page.wait_for_url(f"{base}/admin/held")
            assert await page.get_by_text("user:u-carol").count() == 1
            await page.screenshot(path=ARTIFACTS / "admin-2-held.png", full_page=True)
            held = await world.store.hold("wiki")
            assert held is not None
            await page.get_by_role("button", name=f"Approve all {len(held.keys)}").click()
            await page.wait_for_url(f"{base}/admin/held?*")
            assert "approved" in await page.get_by_role("status").inner_text()
            await page.screenshot(path=ARTIFACTS / "admin-3-held-approved.png", full_page=True)
            assert (await world.store.hold("wiki")).approved
            await world.cycle()  # the daemon's next cycle releases them
            assert await world.store.hold("wiki") is None
            delivered = {(d.kind, d.object_id) for d in world.target.delivered}
            assert ("user", "u-carol") in delivered and ("user", "u-dave") in delivered

            # Failures: retry erin now.
            await page.get_by_role("link", name="Failures").click()
            await page.wait_for_url(f"{base}/admin/failures")
            await page.screenshot(path=ARTIFACTS / "admin-4-failures.png", full_page=True)
            [before] = await world.store.problems("wiki", 10)
            assert before.next_attempt_at > world.clock()
            await page.get_by_role("button", name="Retry Erin Ek now").click()
            await page.wait_for_url(f"{base}/admin/failures?*")
            assert "retried 1" in await page.get_by_role("status").inner_text()
            await page.screenshot(path=ARTIFACTS / "admin-5-retried.png", full_page=True)
            [after] = await world.store.problems("wiki", 10)
            assert after.next_attempt_at <= world.clock()

            # Look a user up with the keyboard alone.
            await page.get_by_role("link", name="Users").click()
            await page.wait_for_url(f"{base}/admin/users")
            await page.keyboard.type("eve")  # the search box has the focus
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/admin/users?q=eve")
            await page.screenshot(path=ARTIFACTS / "admin-6-search.png", full_page=True)
            link = page.get_by_role("link", name='<script>alert("x")</script>')
            await link.focus()
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/admin/users/u-eve")
            heading = await page.get_by_role("heading", level=1).inner_text()
            assert heading == '<script>alert("x")</script>'  # shown as text, never run
            await page.screenshot(path=ARTIFACTS / "admin-7-user.png", full_page=True)
            assert not [m for m in messages if "Content Security Policy" in m]

            # bob is signed in but not an administrator.
            other = await (await browser.new_context()).new_page()
            await other.goto(f"{base}/login")
            await _sign_in(other, "bob")
            await other.wait_for_url(f"{base}/")
            response = await other.goto(f"{base}/admin")
            assert response is not None and response.status == 403
            assert "No access" in await other.content()
            await other.screenshot(path=ARTIFACTS / "admin-8-forbidden.png", full_page=True)
            await other.goto(f"{base}/")
            assert await other.get_by_role("link", name="Admin console").count() == 0

            # The state store goes away: the console says so.
            await world.store.aclose()
            response = await page.goto(f"{base}/admin")
            assert response is not None and response.status == 503
            assert "cannot reach the state store" in await page.content()
            await page.screenshot(path=ARTIFACTS / "admin-9-store-down.png", full_page=True)
        finally:
            await browser.close()


async def test_per_object_buttons_once_decisions_support_them(serve, console: Console):
    """The held page with a per-object decision-maker plugged into the seam (the store
    cannot decide single objects yet): one removal approved, another rejected, by keyboard."""
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    from tests.admin.test_console import PerObject

    decisions = PerObject()
    backend = console.backend()
    backend.decisions = decisions
    await serve(backend=backend)
    base = console.world.base_url
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(90_000)
            page = await context.new_page()
            await page.goto(f"{base}/admin/held")
            await _sign_in(page, "alice")
            await page.wait_for_url(f"{base}/admin/held")
            await page.screenshot(path=ARTIFACTS / "admin-10-held-per-object.png", full_page=True)
            await page.get_by_role("button", name="Approve removal of Carol Ek").focus()
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/admin/held?*")
            assert "approved 1" in await page.get_by_role("status").inner_text()
            await page.get_by_role("button", name="Reject removal of Dave Dahl").click()
            await page.wait_for_url(f"{base}/admin/held?*done=rejected*")
            assert "rejected 1" in await page.get_by_role("status").inner_text()
            assert decisions.calls == [
                ("approve", "wiki", frozenset({("user", "u-carol")})),
                ("reject", "wiki", frozenset({("user", "u-dave")})),
            ]
        finally:
            await browser.close()
