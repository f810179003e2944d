"""Chromium registers a passkey on /account/security and signs in to AlexisHR with it.

The authenticator is Chromium's own virtual one (CDP ``WebAuthn.addVirtualAuthenticator``:
CTAP2, internal transport, user verification, resident keys), so the page's script,
the browser's WebAuthn stack and the server's checks all run for real. WebAuthn wants
a secure context and a domain as RP id: the base URL is http://localhost:<port>
(Chromium treats localhost as secure; 127.0.0.1 cannot be an RP id).
"""

from __future__ import annotations

import re

import pytest

from tests.alexishr_sso.conftest import PASSWORD, make_options, make_sp
from tests.support.chromium import ARTIFACTS, CHROMIUM, FLAGS, needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]


async def test_register_a_passkey_and_sign_in_to_alexishr_with_it(world, serve, local_acs, sp_key):
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    world.base_url = world.base_url.replace("127.0.0.1", "localhost")
    acs_url, sp_holder = local_acs
    world.target.options = make_options(world.tmp, acs_url=acs_url, require_mfa=True)
    client = await serve()
    metadata = await (await client.get("/saml2/alexishr/metadata")).text()
    sp_holder["sp"] = make_sp(world.tmp, sp_key, metadata, acs=acs_url)
    ARTIFACTS.mkdir(exist_ok=True)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            console: list[str] = []
            page.on("console", lambda msg: console.append(msg.text))
            cdp = await context.new_cdp_session(page)
            await cdp.send("WebAuthn.enable", {"enableUI": False})
            added = await cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                        "automaticPresenceSimulation": True,
                    }
                },
            )
            authenticator_id = added["authenticatorId"]

            # Password, then AlexisHR: it requires MFA, alice has no factor: enrolment.
            await page.goto(f"{world.base_url}/")
            await page.get_by_label("Username or email").fill("alice")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(f"{world.base_url}/")
            await page.get_by_role("link", name="Open AlexisHR").click()
            await page.wait_for_url(re.compile(r"/account/security\?.*enrol=1"))
            assert "/login/callback" not in page.url

            await page.get_by_label("Name of the new passkey").fill("Work laptop")
            await page.get_by_role("button", name="Add a passkey").click()
            await page.wait_for_url(re.compile(r"/account/security\?.*done=passkey"))
            await page.get_by_text("Your passkey is added.").wait_for()
            section = page.locator("#passkeys")
            assert "Work laptop" in await section.inner_text()
            # docs/images/passkeys.png is a copy of this one, looked at.
            await section.screenshot(path=ARTIFACTS / "passkey-section.png")
            await page.screenshot(path=ARTIFACTS / "passkey-1-security.png", full_page=True)
            creds = await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})
            [credential] = creds["credentials"]
            [record] = await world.store.factors("u-alice")
            assert record.kind == "passkey" and record.name == "Work laptop"
            assert credential["rpId"] == "localhost" and credential["isResidentCredential"]

            # Sign out; sign in again: the password, then the passkey as the second factor.
            await page.goto(f"{world.base_url}/")
            await page.get_by_role("button", name="Sign out").click()
            await page.goto(f"{world.base_url}/saml2/alexishr")
            await page.get_by_label("Username or email").fill("alice")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(re.compile(r"/mfa\?next="))
            await page.screenshot(path=ARTIFACTS / "passkey-2-mfa.png")
            async with page.expect_navigation(url="**/login/callback*"):
                await page.get_by_role("button", name="Use a passkey").click()
            assert await page.text_content("#nameid") == "Signed in as alice@nordlys.example"
            await page.screenshot(path=ARTIFACTS / "passkey-3-acs.png")
            creds = await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})
            assert creds["credentials"][0]["signCount"] >= 2
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            await browser.close()
