"""Hostile input at the route level: each gets its refusal, and nothing leaks."""

from __future__ import annotations

import base64
import json
import re
import zlib
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import pytest
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

from daemon.http import serve as listener
from daemon.metrics import REGISTRY
from daemon.portal.views import LOGIN_FAILED, LOGIN_THROTTLED
from daemon.saml.bindings import deflate
from tests.sso import stack
from tests.sso.conftest import ACS, ENTITY_ID, IDP_PATH, make_sp
from tests.sso.stack import PASSWORD, form_action, hidden_fields, sign_in
from tests.support import raw_http


def _authn(world, *, issuer=ENTITY_ID, acs=ACS, request_id="_r1", doctype="", body="") -> bytes:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f'<?xml version="1.0"?>{doctype}'
        '<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
        f'ID="{request_id}" Version="2.0" IssueInstant="{now}" '
        f'Destination="{world.base_url}{IDP_PATH}" AssertionConsumerServiceURL="{acs}">'
        f"<saml:Issuer>{issuer}</saml:Issuer>{body}</samlp:AuthnRequest>"
    ).encode()


def _redirect_query(xml: bytes, relay_state: str | None = None) -> str:
    query = "SAMLRequest=" + quote(base64.b64encode(deflate(xml)).decode(), safe="")
    if relay_state is not None:
        query += "&RelayState=" + quote(relay_state, safe="")
    return query


async def _refused(response, text: str) -> str:
    assert response.status == 400, response.status
    page = await response.text()
    assert text in page
    assert "Traceback" not in page
    return page


@pytest.fixture
def no_leaks(world):
    """After the test: no traceback and no registered secret in the captured log."""
    yield
    log = world.log.getvalue()
    assert "Traceback" not in log
    assert PASSWORD not in log


async def test_xxe_is_refused(client, world, tmp_path, no_leaks):
    secret = tmp_path / "local-secret.txt"
    secret.write_text("TOP-SECRET-FILE-CONTENT")
    doctype = f'<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>'
    xml = _authn(world, doctype=doctype, body="<saml:Foo>&x;</saml:Foo>")
    page = await _refused(await client.get(f"{IDP_PATH}?{_redirect_query(xml)}"), "DTD")
    assert "TOP-SECRET" not in page


async def test_billion_laughs_is_refused(client, world, no_leaks):
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(10))
    xml = _authn(world, doctype=f"<!DOCTYPE r [{entities}]>", body="<saml:Foo>&l9;</saml:Foo>")
    await _refused(await client.get(f"{IDP_PATH}?{_redirect_query(xml)}"), "DTD")


async def test_oversized_requests_are_refused(client, world, no_leaks):
    # Inflates past the 64 KiB request limit from a small compressed message.
    padding = "<!-- " + "a" * 100_000 + " -->"
    xml = _authn(world, body=padding)
    await _refused(await client.get(f"{IDP_PATH}?{_redirect_query(xml)}"), "too large")
    # A body over the listener's limit never reaches a handler.
    big = await client.post(IDP_PATH, data={"SAMLRequest": "A" * 400_000})
    assert big.status == 413


async def test_bad_base64_and_bad_deflate_are_refused(client, no_leaks):
    await _refused(await client.get(f"{IDP_PATH}?SAMLRequest=%25%25%25not-base64"), "base64")
    junk = quote(base64.b64encode(b"\xff\x00 definitely not deflate").decode(), safe="")
    await _refused(await client.get(f"{IDP_PATH}?SAMLRequest={junk}"), "DEFLATE")
    post = await client.post(IDP_PATH, data={"SAMLRequest": "***"})
    await _refused(post, "base64")


async def test_unknown_issuer_is_refused(client, world, no_leaks):
    xml = _authn(world, issuer="https://other.example.test/saml/metadata")
    await _refused(
        await client.get(f"{IDP_PATH}?{_redirect_query(xml)}"), "unknown service provider"
    )


async def test_unconfigured_acs_is_refused(client, world, no_leaks):
    xml = _authn(world, acs="https://evil.example/steal")
    page = await _refused(await client.get(f"{IDP_PATH}?{_redirect_query(xml)}"), "not configured")
    assert "evil.example" not in page


async def test_replayed_request_id_is_refused(client, world, no_leaks):
    await sign_in(client, "alice")
    xml = _authn(world, request_id="_replay-me")
    first = await client.get(f"{IDP_PATH}?{_redirect_query(xml)}")
    assert first.status == 200
    await _refused(await client.get(f"{IDP_PATH}?{_redirect_query(xml)}"), "already used")


async def test_relay_state_is_never_a_redirect(client, world, sp_key, no_leaks):
    await sign_in(client, "alice")
    # IdP-initiated: a RelayState in the link is dropped, not followed or forwarded.
    idp = await client.get(f"{IDP_PATH}?RelayState=https://evil.example/", allow_redirects=False)
    assert idp.status == 200
    assert "evil.example" not in await idp.text()
    # SP-initiated: handed back to the configured ACS only, inside the form.
    metadata = await (await client.get(f"{IDP_PATH}/metadata")).text()
    sp = make_sp(world.tmp, sp_key, metadata)
    _, info = sp.prepare_for_authenticate(
        relay_state="https://evil.example/", binding=BINDING_HTTP_REDIRECT
    )
    location = urlsplit(dict(info["headers"])["Location"])
    page = await client.get(f"{location.path}?{location.query}", allow_redirects=False)
    assert page.status == 200
    assert "Location" not in page.headers
    text = await page.text()
    assert form_action(text) == ACS
    assert hidden_fields(text)["RelayState"] == "https://evil.example/"


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "/\t/evil.example/",
        "javascript:alert(1)",
        "evil.example",
    ],
)
async def test_login_next_is_a_local_path_only(client, next_path, no_leaks):
    done = await sign_in(client, "alice", next_path=next_path)
    assert done.status == 303
    assert done.headers["Location"] == "/"


async def test_login_next_local_path_is_kept(client, no_leaks):
    done = await sign_in(client, "alice", next_path=IDP_PATH)
    assert done.headers["Location"] == IDP_PATH


async def test_failed_sign_in_says_the_same_for_every_reason(client, world, no_leaks):
    pages = []
    for username, password in [
        ("alice", "wrong-password-1"),
        ("nobody-here", "wrong-password-1"),
        ("nobody-here", PASSWORD),
    ]:
        response = await sign_in(client, username, password)
        assert response.status == 401
        page = await response.text()
        assert LOGIN_FAILED in page
        assert PASSWORD not in page
        pages.append(re.sub(r'nonce="[^"]+"', "", page.replace(username, "USER")))
    # Apart from the echoed username, the pages are identical.
    assert len(set(pages)) == 1


async def test_brute_force_is_throttled_with_the_same_message(serve, no_leaks):
    client = await serve(login_max_failures_per_user=3, login_max_failures_per_address=100)
    before = REGISTRY.get_sample_value("provisiond_logins_total", {"result": "throttled"}) or 0
    for username in ("alice", "nobody-here"):
        for _ in range(3):
            assert (await sign_in(client, username, "guess-guess")).status == 401
        # Now even the right password is not checked, and the answer does not
        # depend on whether the user exists.
        held = await sign_in(client, username, PASSWORD)
        assert held.status == 429
        assert LOGIN_THROTTLED in await held.text()
    assert (await client.get("/", allow_redirects=False)).status == 303
    after = REGISTRY.get_sample_value("provisiond_logins_total", {"result": "throttled"})
    assert after == before + 2


async def test_throttle_counts_per_account_whatever_name_is_typed(serve, no_leaks):
    client = await serve(login_max_failures_per_user=5, login_max_failures_per_address=100)
    # The username and the email of one account share one budget of guesses.
    for login in ("alice", "alice@nordlys.example", "ALICE", "alice", " Alice@Nordlys.Example "):
        assert (await sign_in(client, login, "guess-guess")).status == 401
    for login in ("alice", "alice@nordlys.example"):
        held = await sign_in(client, login, PASSWORD)
        assert held.status == 429
        assert LOGIN_THROTTLED in await held.text()
    # A success clears the account's count, whichever name it was typed with.
    for login in ("bob", "bob@nordlys.example", "bob", "bob@nordlys.example"):
        assert (await sign_in(client, login, "guess-guess")).status == 401
    assert (await sign_in(client, "bob@nordlys.example")).status == 303
    for _ in range(4):
        assert (await sign_in(client, "bob", "guess-guess")).status == 401
    assert (await sign_in(client, "bob")).status == 303
    # A name that resolves to nobody has a budget of its own, and is held after it.
    for login in ("nobody-here", "Nobody-Here", "nobody-here", "nobody-here", "nobody-here"):
        assert (await sign_in(client, login, "guess-guess")).status == 401
    held = await sign_in(client, " nobody-here ", PASSWORD)
    assert held.status == 429
    assert LOGIN_THROTTLED in await held.text()
    assert (await sign_in(client, "carol")).status == 303


async def test_per_address_throttle(serve, no_leaks):
    client = await serve(login_max_failures_per_user=100, login_max_failures_per_address=2)
    await sign_in(client, "u1", "guess-guess")
    await sign_in(client, "u2", "guess-guess")
    held = await sign_in(client, "alice", PASSWORD)
    assert held.status == 429


async def test_forwarded_for_is_ignored_unless_trusted(serve, no_leaks):
    client = await serve(login_max_failures_per_address=2, login_max_failures_per_user=100)
    for n in range(2):
        page = await client.get("/login")
        csrf = hidden_fields(await page.text())["csrf"]
        await client.post(
            "/login",
            data={"csrf": csrf, "next": "/", "username": f"u{n}", "password": "x-guess-x"},
            headers={"X-Forwarded-For": f"203.0.113.{n}"},
        )
    # The spoofed header did not spread the failures over two addresses.
    assert (await sign_in(client, "alice")).status == 429


async def test_login_without_csrf_token_is_refused(client, no_leaks):
    await client.get("/login")
    response = await client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "next": "/"},
        allow_redirects=False,
    )
    await _refused(response, "expired")
    assert (await client.get("/", allow_redirects=False)).status == 303
    # A token from another browser's pre-session does not fit this one either.
    other = await client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "next": "/", "csrf": "A" * 43},
        allow_redirects=False,
    )
    assert other.status == 400


async def test_logout_without_csrf_token_is_refused(client, no_leaks):
    await sign_in(client, "alice")
    response = await client.post("/logout", data={})
    await _refused(response, "expired")
    assert (await client.get("/", allow_redirects=False)).status == 200


async def test_session_id_changes_at_sign_in(client, world, no_leaks):
    app = world.app
    portal_cookie = "provisiond_session"
    await sign_in(client, "bob")
    planted = client.session.cookie_jar.filter_cookies(world.base_url)[portal_cookie].value
    # The attacker's session id is in the victim's browser; the victim signs in.
    await sign_in(client, "alice")
    now = client.session.cookie_jar.filter_cookies(world.base_url)[portal_cookie].value
    assert now != planted
    assert app is not None
    # The planted id is revoked, not merely replaced.
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({portal_cookie: planted})
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_forged_session_cookie_is_ignored(client, world, no_leaks):
    client.session.cookie_jar.update_cookies({"provisiond_session": "forged.value"})
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_security_headers_on_every_page(client, no_leaks):
    for path in ("/login", "/", f"{IDP_PATH}/metadata", "/no-such-page"):
        response = await client.get(path, allow_redirects=False)
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        # Plain http on loopback: no HSTS, no Secure cookies (documented).
        assert "Strict-Transport-Security" not in response.headers


async def test_hsts_and_secure_cookies_behind_tls(serve, world, no_leaks):
    from daemon.portal.site import PortalConfigError

    client = await serve(trust_forwarded_headers=True)
    response = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    # An https base URL makes every cookie Secure with the __Host- prefix.
    from tests.sso.stack import build_app

    world.base_url = "https://sso.nordlys.example"
    app = await build_app(world)
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(app, host="127.0.0.1")) as tls_client:
        page = await tls_client.get("/login")
        cookie = page.headers["Set-Cookie"]
        assert cookie.startswith("__Host-provisiond_pre=")
        for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
            assert attribute in cookie
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
    # Plain http to a non-loopback host is refused at start-up.
    world.base_url = "http://sso.nordlys.example"
    with pytest.raises(PortalConfigError, match="clear text"):
        await build_app(world)


async def test_post_binding_bad_request_then_signed_in_post(client, world, sp_key, no_leaks):
    metadata = await (await client.get(f"{IDP_PATH}/metadata")).text()
    sp = make_sp(world.tmp, sp_key, metadata)
    _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
    fields = hidden_fields(info["data"])
    first = await client.post(IDP_PATH, data=fields, allow_redirects=False)
    assert first.status == 303
    # The same POST again is a replay.
    await _refused(await client.post(IDP_PATH, data=fields), "already used")


async def test_unknown_resume_handle(client, no_leaks):
    await sign_in(client, "alice")
    await _refused(await client.get(f"{IDP_PATH}?resume=made-up"), "expired")


async def test_requests_too_long_for_the_parser_get_the_refusal_page(world, no_leaks):
    # aiohttp refuses these before any handler or middleware sees them: a real
    # listener, as the daemon starts it, over a plain socket.
    served = await listener.start(await stack.build_app(world), "127.0.0.1", 0)
    before = REGISTRY.get_sample_value("provisiond_sso_refusals_total", {"reason": "too_long"})
    try:
        for request in (
            f"GET /{'LongPath' * 1250} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            f"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'LongHead' * 2500}\r\n\r\n",
        ):
            answer = await raw_http.exchange(served.port, request.encode())
            assert answer.status == 400
            assert answer.headers["Content-Type"].startswith("text/html")
            assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["Referrer-Policy"] == "no-referrer"
            assert answer.headers["Cache-Control"] == "no-store"
            assert "Request refused" in answer.body
            assert "LongPath" not in answer.body and "LongHead" not in answer.body
        # The listener goes on serving.
        fine = await raw_http.exchange(
            served.port, b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert fine.status == 200
    finally:
        await served.stop()
    after = REGISTRY.get_sample_value("provisiond_sso_refusals_total", {"reason": "too_long"})
    assert after == (before or 0) + 2
    log = world.log.getvalue()
    events = [json.loads(line) for line in log.splitlines()]
    refused = [e for e in events if e["event"] == "http request refused"]
    assert [(e["level"], e["reason"]) for e in refused] == [("warning", "too_long")] * 2
    assert not [e for e in events if e["level"] in ("error", "critical")]
    assert "LongPath" not in log and "LongHead" not in log


def test_raw_deflate_helper_round_trips():
    assert zlib.decompress(deflate(b"abc"), -15) == b"abc"
