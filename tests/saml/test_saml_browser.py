"""A real browser submits the POST form under the strict CSP, with and without JavaScript."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web

from daemon.saml.bindings import post_form
from tests.support.chromium import CHROMIUM, FLAGS, needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]  # a browser start takes several seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def site():
    received: list[dict[str, str]] = []
    port = _free_port()
    acs = f"http://127.0.0.1:{port}/acs?connection=test-conn"
    form = post_form(acs, b"<Response/>", relay_state="/after & more")

    async def page(_: web.Request) -> web.Response:
        return web.Response(
            text=form.html,
            content_type="text/html",
            headers={"Content-Security-Policy": form.content_security_policy},
        )

    async def consume(request: web.Request) -> web.Response:
        received.append({k: str(v) for k, v in (await request.post()).items()})
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/form", page)
    app.router.add_post("/acs", consume)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/form", received
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("javascript", [True, False])
async def test_form_posts_under_strict_csp(site, javascript):
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright

    url, received = site
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            context = await browser.new_context(java_script_enabled=javascript)
            page = await context.new_page()
            violations: list[str] = []
            page.on("console", lambda msg: violations.append(msg.text))
            async with page.expect_navigation(url="**/acs*"):
                await page.goto(url)
                if not javascript:
                    await page.click("button[type=submit]")
        finally:
            await browser.close()
    assert received == [{"SAMLResponse": "PFJlc3BvbnNlLz4=", "RelayState": "/after & more"}]
    assert not [v for v in violations if "Content Security Policy" in v]
