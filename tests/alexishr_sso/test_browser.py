"""A real browser: sign in on the portal, click AlexisHR, land at an ACS that checks the answer.

Headless Chromium from Debian, driven by Playwright. The ACS is a small local
aiohttp app that validates the SAMLResponse with pysaml2 (configured from our
metadata) and shows the NameID; the target's ``sso.acs_url`` override points
there. Screenshots of every page go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import html

import pytest
from aiohttp import web
from saml2 import BINDING_HTTP_POST

from tests.alexishr_sso.conftest import PASSWORD, free_port, make_options, make_sp
from tests.sso.stack import hidden_fields
from tests.support.chromium import ARTIFACTS, CHROMIUM, FLAGS, needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]


async def test_sign_in_click_alexishr_and_the_403_page(world, serve, local_acs, sp_key):
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    acs_url, sp_holder = local_acs
    world.target.options = make_options(world.tmp, acs_url=acs_url)
    client = await serve()
    metadata = await (await client.get("/saml2/alexishr/metadata")).text()
    sp_holder["sp"] = make_sp(world.tmp, sp_key, metadata, acs=acs_url)
    ARTIFACTS.mkdir(exist_ok=True)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await (await browser.new_context()).new_page()
            csp_violations: list[str] = []
            page.on("console", lambda msg: csp_violations.append(msg.text))

            await page.goto(f"{world.base_url}/")
            assert "/login" in page.url
            await page.screenshot(path=ARTIFACTS / "sso-1-login.png")
            await page.get_by_label("Username or email").fill("alice")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(f"{world.base_url}/")
            await page.screenshot(path=ARTIFACTS / "sso-2-portal.png")

            async with page.expect_navigation(url="**/login/callback*"):
                await page.get_by_role("link", name="Open AlexisHR").click()
            await page.screenshot(path=ARTIFACTS / "sso-3-acs.png")
            assert await page.text_content("#nameid") == "Signed in as alice@nordlys.example"
            assert not [v for v in csp_violations if "Content Security Policy" in v]

            # bob is not in a bound group: his portal lists nothing, the IdP URL says 403.
            other = await (await browser.new_context()).new_page()
            await other.goto(f"{world.base_url}/login")
            await other.get_by_label("Username or email").fill("bob")
            await other.get_by_label("Password").fill(PASSWORD)
            await other.get_by_role("button", name="Sign in").click()
            await other.wait_for_url(f"{world.base_url}/")
            assert await other.get_by_role("link", name="Open AlexisHR").count() == 0
            response = await other.goto(f"{world.base_url}/saml2/alexishr")
            assert response is not None and response.status == 403
            await other.screenshot(path=ARTIFACTS / "sso-4-forbidden.png")
            assert "You have no access to AlexisHR" in await other.content()
        finally:
            await browser.close()


async def test_sp_initiated_post_binding_from_another_site(world, serve, local_acs, sp_key):
    """AlexisHR's page (another site: localhost, not 127.0.0.1) posts an AuthnRequest; the
    303 answering that cross-site POST sets the browser cookie its parked request is bound to."""
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    acs_url, sp_holder = local_acs
    world.target.options = make_options(world.tmp, acs_url=acs_url)
    client = await serve()
    metadata = await (await client.get("/saml2/alexishr/metadata")).text()
    sp = make_sp(world.tmp, sp_key, metadata, acs=acs_url)
    sp_holder["sp"] = sp

    async def start(_request: web.Request) -> web.Response:
        _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in hidden_fields(info["data"]).items()
        )
        return web.Response(
            text=f'<!DOCTYPE html><title>AlexisHR</title><form method="post" '
            f'action="{world.base_url}/saml2/alexishr">{inputs}<button>Sign in with SSO</button>'
            "</form>",
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/start", start)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(f"http://localhost:{port}/start")
            await page.get_by_role("button", name="Sign in with SSO").click()
            await page.wait_for_url(lambda url: url.startswith(f"{world.base_url}/login?"))
            cookies = {c["name"] for c in await context.cookies(world.base_url)}
            assert "provisiond_browser" in cookies
            await page.get_by_label("Username or email").fill("alice")
            await page.get_by_label("Password").fill(PASSWORD)
            async with page.expect_navigation(url="**/login/callback*"):
                await page.get_by_role("button", name="Sign in").click()
            assert await page.text_content("#nameid") == "Signed in as alice@nordlys.example"
            # Signed in now: the next POST from AlexisHR goes straight through.
            await page.goto(f"http://localhost:{port}/start")
            async with page.expect_navigation(url="**/login/callback*"):
                await page.get_by_role("button", name="Sign in with SSO").click()
            assert await page.text_content("#nameid") == "Signed in as alice@nordlys.example"
        finally:
            await browser.close()
            await runner.cleanup()
