"""The console in a real daemon process: the service hands it the live status document,
per-object decisions, ``explain`` and the provisioning log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar

from tests.daemon.harness import Deployment
from tests.sso.stack import PASSWORD, directory_doc, free_port, hidden_fields

pytestmark = pytest.mark.slow


async def _sign_in(browser: ClientSession, base: str, user: str) -> None:
    form = hidden_fields(await (await browser.get(f"{base}/login?next=/admin")).text())
    done = await browser.post(
        f"{base}/login",
        data={"csrf": form["csrf"], "next": form["next"], "username": user, "password": PASSWORD},
        allow_redirects=False,
    )
    assert done.status == 303 and done.headers["Location"] == "/admin"


async def test_a_running_daemon_serves_the_console_to_its_admins(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    doc = directory_doc("App Users")
    doc["groups"].append({"id": "g-ops", "name": "Ops", "members": ["u-alice"]})
    d.write_directory(doc)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    public = {"enabled": True, "host": "127.0.0.1", "port": port, "base_url": base,
              "admin_group": "Ops"}  # fmt: skip
    d.write_config(http={"ops": {"host": "127.0.0.1", "port": 0}, "public": public})
    daemon = d.start()
    try:
        daemon.wait_ready()
        daemon.wait_for("provisiond started")
        async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as alice:
            await _sign_in(alice, base, "alice")
            page = await alice.get(f"{base}/admin")
            assert page.status == 200
            text = await page.text()
            row = re.search(r'<th scope="row">app .*?</tr>', text, re.S)
            assert row, text
            assert "slow-journal" in row.group(0) and ">ok<" in row.group(0)
            assert "file" in text and "ready" in text
            users = await (await alice.get(f"{base}/admin/users/u-carol")).text()
            assert '<th scope="row">app</th>' in users
            # The daemon gives the console explain and the provisioning log.
            assert 'id="explain"' in users and "explain-unavailable" not in users
            assert "yes: granted by App Users" in users
            assert 'id="provisioning-log"' in users and ">delivered<" in users
            held = await (await alice.get(f"{base}/admin/held")).text()
            assert "holds nothing for app" in held
        async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as bob:
            await _sign_in(bob, base, "bob")
            assert (await bob.get(f"{base}/admin")).status == 403
    finally:
        assert daemon.stop() == 0
