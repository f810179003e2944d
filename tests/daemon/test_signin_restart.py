"""A real daemon on SQLite: a restart, clean or by SIGKILL, keeps users signed in."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar

from daemon.portal.session_key import GENERATED_KEY_NAME, STORE_KEY_NAME
from tests.sso.stack import PASSWORD, directory_doc, free_port, hidden_fields

from .harness import Daemon, Deployment

pytestmark = pytest.mark.slow


def _start(d: Deployment) -> Daemon:
    daemon = d.start()
    daemon.wait_ready()
    daemon.wait_for("provisiond started")
    return daemon


def _rows(root: Path, sql: str) -> int:
    with sqlite3.connect(root / "state" / "provisiond.db") as db:
        return int(db.execute(sql).fetchone()[0])


async def _signed_in(browser: ClientSession, base: str) -> bool:
    page = await browser.get(f"{base}/", allow_redirects=False)
    if page.status == 303:
        return False
    assert page.status == 200, await page.text()
    assert "Signed in as Alice Lindqvist." in await page.text()  # her full name
    return True


async def test_a_restart_keeps_the_same_cookie_signed_in(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    d.write_directory(directory_doc("App Users"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    d.write_config(
        http={
            "ops": {"host": "127.0.0.1", "port": 0},
            "public": {"enabled": True, "host": "127.0.0.1", "port": port, "base_url": base},
        }
    )
    daemon = _start(d)
    try:
        async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as browser:
            form = hidden_fields(await (await browser.get(f"{base}/login")).text())
            done = await browser.post(
                f"{base}/login",
                data={"csrf": form["csrf"], "next": "/", "username": "alice", "password": PASSWORD},
                allow_redirects=False,
            )
            assert done.status == 303
            assert await _signed_in(browser, base)
            for stop in (signal.SIGTERM, signal.SIGKILL):
                daemon.signal(stop)
                daemon.proc.wait(timeout=30)
                daemon = _start(d)
                # The same cookie, a new process: still signed in.
                assert await _signed_in(browser, base), f"signed out by a restart after {stop.name}"
            # Signing out still works, and sticks across a restart too.
            page = await browser.get(f"{base}/")
            csrf = hidden_fields(await page.text())["csrf"]
            assert (await browser.post(f"{base}/logout", data={"csrf": csrf})).status == 200
            assert not await _signed_in(browser, base)
            daemon.stop()
            # Expired sign-in state left behind is purged by the next daemon.
            with sqlite3.connect(tmp_path / "state" / "provisiond.db") as db:
                db.execute("INSERT INTO claims (key, expires_at) VALUES ('stale', 1.0)")
            daemon = _start(d)
            assert not await _signed_in(browser, base)
            deadline = time.monotonic() + 20
            while _rows(tmp_path, "SELECT COUNT(*) FROM claims WHERE key = 'stale'") != 0:
                assert time.monotonic() < deadline, "the expired claim was never purged"
                await asyncio.sleep(0.1)
    finally:
        daemon.stop()
    # The generated session key lives in the state store, not in a file, and
    # never in the daemon's log.
    assert not (tmp_path / "state" / GENERATED_KEY_NAME).exists()
    with sqlite3.connect(tmp_path / "state" / "provisiond.db") as db:
        (key,) = db.execute("SELECT value FROM meta WHERE key = ?", (STORE_KEY_NAME,)).fetchone()
    assert len(key) == 64
    for out in d.outputs:
        assert key not in out.read_text()
