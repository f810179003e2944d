"""Two replicas on one state store: sign in on one, single sign-on and sign-out on the other.

Replica A and replica B are two public apps, each with its own store object
on the same database (what two processes have), behind one public URL, on
every store backend (SQLite: one file; PostgreSQL: one database on the test
cluster). One
browser (one cookie jar) talks to either, as a load balancer would send it.
The SP is pysaml2, as in the other SSO tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from yarl import URL

from daemon.directory import Directory
from daemon.portal.views import LOGIN_THROTTLED
from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey
from tests.sso import stack
from tests.sso.conftest import ACS, BOUND, IDP_PATH, make_options, make_sp
from tests.sso.stack import PASSWORD, SsoTarget, World, form_action, hidden_fields, sign_in
from tests.store.backends import FACTORIES

Client = TestClient[web.Request, web.Application]


@dataclass
class Replicas:
    a: Client
    b: Client
    world: World

    async def sp(self, sp_key: Any) -> Any:
        metadata = await (await self.a.get(f"{IDP_PATH}/metadata")).text()
        return make_sp(self.world.tmp, sp_key, metadata)


@pytest.fixture(params=sorted(FACTORIES))
async def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, idp_key: SigningKey
) -> AsyncIterator[Replicas]:
    """A and B, each with its own store object on one database of each backend; one browser.

    The world (one engine cycle) syncs the directory into A's store; B sees it
    through the database, as a second process would.
    """
    backend = FACTORIES[request.param]
    backend.setup(request)
    factory = await backend.create(tmp_path, "state")
    try:
        store_a, store_b = factory.new(), factory.new()
        await store_a.open()
        await store_b.open()

        def target(context: PluginContext) -> SsoTarget:
            return SsoTarget("wiki", make_options(), context)

        async with stack.open_world(tmp_path, idp_key, target, BOUND, store=store_a) as world:
            jar = CookieJar(unsafe=True)
            port = int(world.base_url.rsplit(":", 1)[1])
            app_a = await stack.build_app(world)
            app_b = await stack.build_app(
                world, directory=Directory(store_b, world.directory.source)
            )
            a = TestClient(TestServer(app_a, host="127.0.0.1", port=port), cookie_jar=jar)
            b = TestClient(
                TestServer(app_b, host="127.0.0.1", port=stack.free_port()), cookie_jar=jar
            )
            await a.start_server()
            await b.start_server()
            try:
                yield Replicas(a, b, world)
            finally:
                await a.close()
                await b.close()
                await store_b.aclose()
    finally:
        await factory.aclose()
        await backend.dispose()


def _redirect(info: Any) -> URL:
    location = urlsplit(dict(info["headers"])["Location"])
    assert location.path == IDP_PATH
    return URL(f"{location.path}?{location.query}", encoded=True)


def _next_of(location: str) -> str:
    url = urlsplit(location)
    assert url.path == "/login"
    return parse_qs(url.query)["next"][0]


async def test_sign_in_on_a_sso_on_b_sign_out_on_b_ends_it_on_a(replicas, sp_key):
    a, b = replicas.a, replicas.b
    sp = await replicas.sp(sp_key)
    request_id, info = sp.prepare_for_authenticate(
        relay_state="page-7", binding=BINDING_HTTP_REDIRECT
    )
    # The SP's request reaches A, which parks it while alice signs in on A.
    parked = await a.get(_redirect(info), allow_redirects=False)
    assert parked.status == 303
    resume = _next_of(parked.headers["Location"])
    assert resume.startswith(f"{IDP_PATH}?resume=")
    done = await sign_in(a, "alice", next_path=resume)
    assert done.status == 303 and done.headers["Location"] == resume
    # The browser comes back through B: B takes the handle A parked, and
    # knows the session A started.
    page = await b.get(resume)
    assert page.status == 200, await page.text()
    text = await page.text()
    fields = hidden_fields(text)
    assert form_action(text) == ACS
    assert fields["RelayState"] == "page-7"
    response = sp.parse_authn_request_response(
        fields["SAMLResponse"], BINDING_HTTP_POST, outstanding={request_id: "/"}
    )
    assert response.in_response_to == request_id
    assert response.name_id.text == "u-alice"
    # The handle was used up on B, so A refuses it too.
    assert (await a.get(resume)).status == 400
    # IdP-initiated on A works with the same session.
    assert (await a.get(IDP_PATH)).status == 200
    # Sign out on B: the session is gone on A as well.
    portal = await b.get("/")
    assert portal.status == 200
    csrf = hidden_fields(await portal.text())["csrf"]
    out = await b.post("/logout", data={"csrf": csrf})
    assert out.status == 200 and "You have signed out" in await out.text()
    gone = await a.get("/", allow_redirects=False)
    assert gone.status == 303 and gone.headers["Location"].startswith("/login")
    assert (await a.get(IDP_PATH, allow_redirects=False)).status == 303


async def test_throttle_counts_add_up_across_replicas(replicas):
    a, b = replicas.a, replicas.b
    # The default limit is 5 failures per username: 2 on A and 2 on B leave room for one more.
    for client in (a, b, a, b):
        assert (await sign_in(client, "alice", "guess-guess")).status == 401
    assert (await sign_in(a, "alice", "guess-guess")).status == 401
    # Five in all, split over the replicas: now neither checks the password.
    for client in (b, a):
        held = await sign_in(client, "alice", PASSWORD)
        assert held.status == 429
        assert LOGIN_THROTTLED in await held.text()
    assert (await a.get("/", allow_redirects=False)).status == 303


async def test_an_authn_request_accepted_on_a_is_refused_on_b(replicas, sp_key):
    a, b = replicas.a, replicas.b
    sp = await replicas.sp(sp_key)
    assert (await sign_in(a, "alice")).status == 303
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
    first = await a.get(_redirect(info))
    assert first.status == 200
    response = sp.parse_authn_request_response(
        hidden_fields(await first.text())["SAMLResponse"],
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.in_response_to == request_id
    replayed = await b.get(_redirect(info))
    assert replayed.status == 400
    assert "already used" in await replayed.text()
    # And the other way round, with the POST binding.
    _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
    fields = hidden_fields(info["data"])
    assert (await b.post(IDP_PATH, data=fields, allow_redirects=False)).status == 303
    again = await a.post(IDP_PATH, data=fields, allow_redirects=False)
    assert again.status == 400
    assert "already used" in await again.text()
