"""Sign-in when the state store cannot be reached: a clean 503, never an unchecked sign-in.

The first tests close the real SQLite store under the running app, or stop
the real PostgreSQL server under it. The others
need the store to fail at one exact call (the throttle's), which a real store
cannot be made to do on cue: :class:`FailingAt` wraps the real store and
raises :class:`~daemon.store.StateError` from the named methods only. It is a
fake for the failure injection alone; every other call reaches the real store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from saml2 import BINDING_HTTP_REDIRECT

from daemon.directory import Directory
from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey
from daemon.store import StateError, Store
from tests.sso import stack
from tests.sso.conftest import BOUND, IDP_PATH, make_options, make_sp
from tests.sso.stack import PASSWORD, SsoTarget, World, hidden_fields, sign_in
from tests.store.backends import FACTORIES

UNAVAILABLE = "Sign-in is unavailable for a moment"


class FailingAt:
    """The real store, except that the methods named in ``failing`` raise StateError."""

    def __init__(self, store: Store, *failing: str) -> None:
        self._store = store
        self.failing = set(failing)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if name in self.failing:
                raise StateError(f"state database: injected failure in {name}")
            return await method(*args, **kwargs)

        return call


def _session_cookie(response: Any) -> bool:
    return any(
        c.startswith("provisiond_session=") for c in response.headers.getall("Set-Cookie", [])
    )


async def _unavailable(response: Any) -> str:
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    text = await response.text()
    assert UNAVAILABLE in text
    assert "Traceback" not in text and "StateError" not in text and "state.db" not in text
    return text


def _events(world: World) -> list[dict[str, Any]]:
    return [json.loads(line) for line in world.log.getvalue().splitlines() if line.strip()]


def _no_traceback_logged(world: World) -> list[dict[str, Any]]:
    """The operator's line and the audit line were written, without a traceback."""
    events = _events(world)
    unreachable = [e for e in events if e["event"] == "state store unreachable; request refused"]
    assert unreachable and all(
        "injected" in e["error"] or "not open" in e["error"] for e in unreachable
    )
    assert any(e["event"] == "request refused" and e["reason"] == "unavailable" for e in events)
    assert "Traceback" not in world.log.getvalue()
    return events


def _signed_in(events: list[dict[str, Any]]) -> list[str]:
    return [e["user_id"] for e in events if e["event"] == "signed in"]


async def test_a_closed_store_gives_503_pages_and_signs_nobody_in(client, world, sp_key):
    metadata = await (await client.get(f"{IDP_PATH}/metadata")).text()
    sp = make_sp(world.tmp, sp_key, metadata)
    assert (await sign_in(client, "alice")).status == 303
    form = hidden_fields(await (await client.get("/login", params={"force": "1"})).text())
    await world.store.aclose()
    # A signed-in page: the session cannot be checked.
    await _unavailable(await client.get("/"))
    # A sign-in with the right password: not signed in, no session cookie.
    response = await client.post(
        "/login",
        data={"csrf": form["csrf"], "next": "/", "username": "carol", "password": PASSWORD},
        allow_redirects=False,
    )
    await _unavailable(response)
    assert not _session_cookie(response)
    # An SP's request: its ID cannot be recorded, so it is not accepted.
    _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
    location = dict(info["headers"])["Location"]
    await _unavailable(await client.get(location[location.index(IDP_PATH) :]))
    assert _signed_in(_no_traceback_logged(world)) == ["u-alice"]  # before the store closed


@pytest.fixture
async def failing(world: World) -> AsyncIterator[tuple[FailingAt, TestClient[Any, Any]]]:
    """The world's app, on a store whose failing methods the test chooses."""
    store = FailingAt(world.store)
    directory = Directory(store, world.directory.source)  # type: ignore[arg-type]
    port = int(world.base_url.rsplit(":", 1)[1])
    app: web.Application = await stack.build_app(world, directory=directory)
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield store, client
    finally:
        await client.close()


async def test_no_sign_in_when_the_throttle_cannot_be_checked(failing, world):
    store, client = failing
    store.failing = {"count_failures"}
    response = await sign_in(client, "alice", PASSWORD)
    await _unavailable(response)
    assert not _session_cookie(response)
    assert "count_failures" in store.calls
    # The password was never checked, and no session was written.
    assert "put_session" not in store.calls
    assert _signed_in(_no_traceback_logged(world)) == []
    # Once the store answers again, the same sign-in works.
    store.failing = set()
    assert (await sign_in(client, "alice", PASSWORD)).status == 303
    assert (await client.get("/", allow_redirects=False)).status == 200


async def test_a_failure_that_cannot_be_counted_is_still_audited(failing, world):
    store, client = failing
    store.failing = {"add_failures"}
    response = await sign_in(client, "alice", "guess-guess")
    await _unavailable(response)
    events = _no_traceback_logged(world)
    assert [e["event"] for e in events if e["event"].startswith("sign-in")] == ["sign-in failed"]


async def test_a_parked_request_that_cannot_be_taken_is_a_503(failing, world, sp_key):
    store, client = failing
    metadata = await (await client.get(f"{IDP_PATH}/metadata")).text()
    sp = make_sp(world.tmp, sp_key, metadata)
    _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
    location = dict(info["headers"])["Location"]
    parked = await client.get(location[location.index(IDP_PATH) :], allow_redirects=False)
    assert parked.status == 303
    store.failing = {"take_parked"}
    resume = parse_qs(urlsplit(parked.headers["Location"]).query)["next"][0]
    await _unavailable(await client.get(resume))
    _no_traceback_logged(world)


@pytest.fixture
async def pg_world(
    request: pytest.FixtureRequest, tmp_path: Path, idp_key: SigningKey
) -> AsyncIterator[tuple[World, TestClient[Any, Any]]]:
    """The sign-in stack on a PostgreSQL store (a fresh database on the test cluster)."""
    backend = FACTORIES["postgresql"]
    backend.setup(request)
    factory = await backend.create(tmp_path, "state")
    try:
        store = factory.new()
        await store.open()

        def target(context: PluginContext) -> SsoTarget:
            return SsoTarget("wiki", make_options(), context)

        async with stack.open_world(tmp_path, idp_key, target, BOUND, store=store) as world:
            port = int(world.base_url.rsplit(":", 1)[1])
            app = await stack.build_app(world)
            client = TestClient(TestServer(app, host="127.0.0.1", port=port))
            await client.start_server()
            try:
                yield world, client
            finally:
                await client.close()
    finally:
        await factory.aclose()
        await backend.dispose()


async def test_postgresql_lost_gives_503_pages_and_sessions_come_back(pg_world, pg_cluster):
    world, client = pg_world
    assert (await sign_in(client, "alice")).status == 303
    form = hidden_fields(await (await client.get("/login", params={"force": "1"})).text())
    pg_cluster.stop()
    try:
        await _unavailable(await client.get("/"))
        response = await client.post(
            "/login",
            data={"csrf": form["csrf"], "next": "/", "username": "carol", "password": PASSWORD},
            allow_redirects=False,
        )
        await _unavailable(response)
        assert not _session_cookie(response)
    finally:
        pg_cluster.start()
    events = _events(world)
    assert any(e["event"] == "state store unreachable; request refused" for e in events)
    # No traceback from provisiond (asyncpg's pool logs its own reconnect attempts).
    ours = [e for e in events if e.get("logger", "").startswith("provisiond")]
    assert not [e for e in ours if "exception" in e or "exc_info" in e]
    assert _signed_in(events) == ["u-alice"]
    # The server is back: the session was kept in it, the browser is still signed in.
    for _ in range(2):  # the first call may still meet a connection of the old server
        page = await client.get("/", allow_redirects=False)
        if page.status != 503:
            break
    assert page.status == 200
