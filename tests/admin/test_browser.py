"""A real browser through the admin console: Debian's headless Chromium, driven by Playwright.

The console as ``provisiond run`` wires it (``Console.daemon_backend``: the
store's per-object decisions, ``explain`` and the provisioning log), over the
real sign-in stack and a real SQLite store. alice (an administrator) signs in
through the portal's sign-in, releases carol's held removal (keyboard) and
rejects dave's, the next real engine cycle delivers carol's deactivation and
keeps dave active, she approves what is left all at once, retries a failed
delivery, and looks users up with the keyboard; bob gets the 403 page.
Screenshots of the portal and every console page go to ``test-artifacts/``
at the repository root (``admin-*.png``).
"""

from __future__ import annotations

import pytest

from daemon import holds
from tests.admin.conftest import Console
from tests.sso.stack import PASSWORD
from tests.support.chromium import ARTIFACTS, CHROMIUM, FLAGS, needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]

CAROL = ("user", "u-carol")
DAVE = ("user", "u-dave")


async def _sign_in(page, user: str) -> None:
    await page.get_by_label("Username or email").fill(user)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()


async def _shot(page, name: str) -> None:
    await page.screenshot(path=ARTIFACTS / f"admin-{name}.png", full_page=True)


async def test_an_admin_decides_retries_and_looks_up_and_bob_is_refused(serve, console: Console):
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    await serve(backend=console.daemon_backend())
    world = console.world
    store = world.store
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

            # Not signed in: the portal's sign-in first, then back to the console.
            await page.goto(f"{base}/admin")
            assert "/login" in page.url
            await _shot(page, "01-sign-in")
            await _sign_in(page, "alice")
            await page.wait_for_url(f"{base}/admin")
            # The portal links the console for administrators only.
            await page.goto(f"{base}/")
            await _shot(page, "02-portal")
            await page.get_by_role("link", name="Admin console").click()
            await page.wait_for_url(f"{base}/admin")
            await _shot(page, "03-overview")
            row = page.get_by_role("row", name="wiki")
            assert "removals held" in await row.inner_text()

            # Held removals: release carol's (keyboard), reject dave's.
            await page.get_by_role("link", name="Held removals").click()
            await page.wait_for_url(f"{base}/admin/held")
            assert await page.get_by_text("user:u-carol").count() == 1
            await _shot(page, "04-held")
            await page.get_by_role("button", name="Approve removal of Carol Ek").focus()
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/admin/held?*done=approved-1")
            assert "approved 1" in await page.get_by_role("status").inner_text()
            await page.get_by_role("button", name="Reject removal of Dave Dahl").click()
            await page.wait_for_url(f"{base}/admin/held?*done=rejected-1")
            assert "rejected 1" in await page.get_by_role("status").inner_text()
            row = page.get_by_role("row", name="Dave Dahl")
            assert "Rejected by admin:alice" in await row.inner_text()
            await _shot(page, "05-held-decided")
            decided = await store.decisions("wiki")
            assert decided[CAROL].decision == "approved" and decided[CAROL].actor == "admin:alice"
            assert decided[DAVE].decision == "rejected" and decided[DAVE].actor == "admin:alice"

            # Failures: retry erin now.
            await page.get_by_role("link", name="Failures").click()
            await page.wait_for_url(f"{base}/admin/failures")
            await _shot(page, "06-failures")
            [before] = await store.problems("wiki", 10)
            assert before.next_attempt_at > world.clock()
            await page.get_by_role("button", name="Retry Erin Ek now").click()
            await page.wait_for_url(f"{base}/admin/failures?*")
            assert "retried 1" in await page.get_by_role("status").inner_text()
            await _shot(page, "07-retried")
            [after] = await store.problems("wiki", 10)
            assert after.next_attempt_at <= world.clock()

            # The daemon's next cycle: carol's deactivation goes out, dave stays active.
            sent_before = len(world.target.delivered)
            await world.cycle()
            sent = {(d.kind, d.object_id) for d in world.target.delivered[sent_before:]}
            assert CAROL in sent and DAVE not in sent
            carol = await store.target_object("wiki", CAROL)
            dave = await store.target_object("wiki", DAVE)
            assert carol is not None and carol.active is False
            assert dave is not None and dave.active is True
            still_held = {o.key for o in await holds.held(store, "wiki")}
            assert CAROL not in still_held and DAVE not in still_held
            kept = await store.decisions("wiki")
            assert kept[DAVE].decision == "rejected" and kept[DAVE].applied

            # What is left (the group's membership removals) is approved all at once.
            await page.get_by_role("link", name="Held removals").click()
            await page.wait_for_url(f"{base}/admin/held")
            assert await page.get_by_text("user:u-carol").count() == 0
            assert await page.get_by_text("group:g-bound").count() == 1
            await page.get_by_role("button", name="Approve all 1").click()
            await page.wait_for_url(f"{base}/admin/held?*done=approved-1")
            await world.cycle()
            assert await store.hold("wiki") is None
            await page.reload()
            assert "holds nothing for wiki" in await page.content()

            # Look users up with the keyboard alone: eve's names are HTML, shown as text.
            await page.get_by_role("link", name="Users").click()
            await page.wait_for_url(f"{base}/admin/users")
            # The search box has the focus (autofocus), once the page has settled.
            await page.wait_for_function("document.activeElement?.type === 'search'")
            await page.keyboard.type("eve")
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/admin/users?q=eve")
            await _shot(page, "08-search")
            link = page.get_by_role("link", name='<script>alert("x")</script>')
            await link.focus()
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/admin/users/u-eve")
            heading = await page.get_by_role("heading", level=1).inner_text()
            assert heading == '<script>alert("x")</script>'  # shown as text, never run
            await _shot(page, "09-user-eve")

            # carol: explain says why she is out, the log says who released her removal.
            await page.goto(f"{base}/admin/users?q=carol")
            await page.get_by_role("link", name="Carol Ek").click()
            await page.wait_for_url(f"{base}/admin/users/u-carol")
            explain = await page.locator("#explain").inner_text()
            assert "not in scope" in explain and "in none of the groups bound to wiki" in explain
            assert "deactivated" in explain
            entries = await page.locator("#provisioning-log").inner_text()
            assert "approved" in entries and "admin:alice" in entries
            assert "delivered" in entries and "held" in entries
            await _shot(page, "10-user-carol")
            # dave: the rejection, in explain and in the log.
            await page.goto(f"{base}/admin/users/u-dave")
            assert "rejected" in await page.locator("#explain").inner_text()
            assert "rejected" in await page.locator("#provisioning-log").inner_text()
            await _shot(page, "11-user-dave")
            assert not [m for m in messages if "Content Security Policy" in m]

            # bob is signed in but not an administrator.
            other = await (await browser.new_context()).new_page()
            await other.goto(f"{base}/login")
            await _sign_in(other, "bob")
            await other.wait_for_url(f"{base}/")
            response = await other.goto(f"{base}/admin")
            assert response is not None and response.status == 403
            assert "No access" in await other.content()
            await other.screenshot(path=ARTIFACTS / "admin-12-forbidden.png", full_page=True)
            await other.goto(f"{base}/")
            assert await other.get_by_role("link", name="Admin console").count() == 0

            # The state store goes away: the console says so.
            await store.aclose()
            response = await page.goto(f"{base}/admin")
            assert response is not None and response.status == 503
            assert "cannot reach the state store" in await page.content()
            await _shot(page, "13-store-down")
        finally:
            await browser.close()
