"""A real browser with AlexisHR requiring a second factor: enrol TOTP, sign in with a code,
and use a recovery code once.

Headless Chromium from Debian, driven by Playwright, as in ``test_browser.py``.
The stand-in ACS validates the SAMLResponse with pysaml2 and shows the NameID
and the AuthnContextClassRef. Codes come from pyotp with the key the
enrolment page shows. Screenshots go to ``test-artifacts/`` (those in
``docs/images/`` were taken from them).
"""

from __future__ import annotations

import pyotp
import pytest

from daemon.saml.names import AUTHN_REFEDS_MFA
from tests.alexishr_sso.conftest import PASSWORD, make_options, make_sp
from tests.support.chromium import ARTIFACTS, CHROMIUM, FLAGS, needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]


async def test_enrol_totp_sign_in_with_a_code_and_a_recovery_code_once(
    world, serve, local_acs, sp_key
):
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    acs_url, holder = local_acs
    world.target.options = make_options(world.tmp, acs_url=acs_url, require_mfa=True)
    client = await serve()
    metadata = await (await client.get("/saml2/alexishr/metadata")).text()
    holder["sp"] = make_sp(world.tmp, sp_key, metadata, acs=acs_url)
    ARTIFACTS.mkdir(exist_ok=True)
    base = world.base_url

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        console: list[str] = []

        async def signed_in_page():
            page = await (await browser.new_context()).new_page()
            page.on("console", lambda msg: console.append(msg.text))
            await page.goto(f"{base}/login")
            await page.get_by_label("Username or email").fill("alice")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(f"{base}/")
            return page

        async def open_alexishr(page, lands: str) -> None:
            await page.get_by_role("link", name="Open AlexisHR").click()
            await page.wait_for_url(f"{base}{lands}**")

        async def at_alexishr(page) -> None:
            await page.wait_for_url("**/login/callback*")
            assert await page.text_content("#nameid") == "Signed in as alice@nordlys.example"
            assert await page.text_content("#context") == AUTHN_REFEDS_MFA

        try:
            # Enrolment: no factor yet, so opening AlexisHR leads to it.
            page = await signed_in_page()
            await open_alexishr(page, "/account/security")
            assert "asks for a second step" in await page.content()
            assert await page.locator(".qr svg").count() == 1
            await page.screenshot(path=ARTIFACTS / "mfa-enrol.png", full_page=True)
            key = (await page.text_content("#totp-key") or "").replace(" ", "")
            totp = pyotp.TOTP(key)
            await page.get_by_label("Code from the app").fill(totp.at(world.clock()))
            await page.get_by_role("button", name="Turn on").click()
            await page.wait_for_selector("ol.codes")
            await page.screenshot(path=ARTIFACTS / "mfa-recovery-codes.png", full_page=True)
            codes = await page.locator("ol.codes code").all_text_contents()
            assert len(codes) == 10
            async with page.expect_navigation(url="**/login/callback*"):
                await page.get_by_role("link", name="I have saved them, continue").click()
            await at_alexishr(page)

            # Later, in another browser: the password, then a code.
            world.clock.offset = 30
            page = await signed_in_page()
            await open_alexishr(page, "/mfa")
            await page.screenshot(path=ARTIFACTS / "mfa-challenge.png", full_page=True)
            await page.get_by_label("Code from your authenticator app").fill(totp.at(world.clock()))
            await page.get_by_role("button", name="Continue").click()
            await at_alexishr(page)

            # A recovery code works once; the second use is refused.
            for attempt in range(2):
                page = await signed_in_page()
                await open_alexishr(page, "/mfa")
                await page.get_by_text("Use a recovery code instead").click()
                await page.get_by_label("Recovery code").fill(codes[0])
                await page.get_by_role("button", name="Use recovery code").click()
                if attempt == 0:
                    await at_alexishr(page)
                else:
                    await page.wait_for_selector("#mfa-error")
                    assert "already used" in (await page.text_content("#mfa-error") or "")
                    assert "/mfa" in page.url
                    await page.screenshot(path=ARTIFACTS / "mfa-recovery-refused.png")
            assert not [m for m in console if "Content Security Policy" in m]
        finally:
            await browser.close()
