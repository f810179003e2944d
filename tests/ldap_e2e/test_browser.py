"""A real browser signs in to the portal with a slapd user's LDAP password.

Headless Debian Chromium driven by Playwright, as in tests/alexishr_sso/test_browser.py.
Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import pytest

from daemon.portal.views import LOGIN_FAILED
from tests.ldap import seed
from tests.ldap_e2e.conftest import Portal
from tests.support.chromium import ARTIFACTS, CHROMIUM, FLAGS, needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]


async def test_ldap_user_signs_in_and_bad_attempts_read_alike(portal: Portal) -> None:
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await (await browser.new_context()).new_page()
            messages: list[str | None] = []
            # wrong password, empty password (the browser's `required` is bypassed), unknown user
            for login, password in [("alice", "wrong-password"), ("alice", ""), ("nobody", "x")]:
                await page.goto(f"{portal.base_url}/login")
                await page.get_by_label("Username or email").fill(login)
                await page.get_by_label("Password").fill(password)
                if not password:
                    await page.eval_on_selector("#password", "e => e.removeAttribute('required')")
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_selector("#login-error")
                messages.append(await page.text_content("#login-error"))
            await page.screenshot(path=ARTIFACTS / "ldap-1-refused.png")
            assert messages == [LOGIN_FAILED] * 3

            await page.goto(f"{portal.base_url}/")
            assert "/login" in page.url
            await page.get_by_label("Username or email").fill("alice")
            await page.get_by_label("Password").fill(seed.PASSWORDS["alice"])
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(f"{portal.base_url}/")
            await page.screenshot(path=ARTIFACTS / "ldap-2-portal.png")
            assert await page.get_by_role("link", name="Open AlexisHR").count() == 1
        finally:
            await browser.close()
