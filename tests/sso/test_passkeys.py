"""Passkeys over the real stack: the /mfa/passkey/ routes, the pages, and the SAML policy.

The browser's part is the software authenticator of tests/portal/authenticator.py
(the Chromium virtual authenticator is in tests/alexishr_sso/test_passkey_browser.py).
The base URL is http://127.0.0.1:<port>, so the RP id is 127.0.0.1: fine for the
webauthn library, which a browser would refuse (it wants a domain).
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
from saml2 import BINDING_HTTP_POST

from daemon.portal.mfa import passkeys as pk
from daemon.portal.passkey_routes import CONFIRM_FIRST, MAX_JSON_BYTES
from daemon.portal.site import PORTAL
from daemon.saml.names import AUTHN_REFEDS_MFA
from tests.portal.authenticator import SoftAuthenticator
from tests.sso.conftest import ACS, IDP_PATH, make_sp
from tests.sso.mfa import enrol, form, next_of, path_of, post
from tests.sso.stack import form_action, hidden_fields, sign_in

_CSRF = re.compile(r'data-csrf="([^"]+)"')


def device(world: Any) -> SoftAuthenticator:
    return SoftAuthenticator(origin=world.base_url, rp_id="127.0.0.1")


def audit(world: Any, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in world.log.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == event]


async def page_csrf(client: Any, path: str) -> tuple[str, Any]:
    """The CSRF token of ``path`` (its passkey section's, else its forms'), and the page."""
    answer = await client.get(path)
    text = await answer.text()
    match = _CSRF.search(text)
    token = match.group(1) if match else hidden_fields(text).get("csrf")
    assert token, text[:800]
    return token, answer


async def jpost(client: Any, path: str, csrf: str, body: dict[str, Any] | None = None) -> Any:
    return await client.post(
        path, json=body or {}, headers={"X-CSRF-Token": csrf}, allow_redirects=False
    )


async def register(
    client: Any, csrf: str, key: SoftAuthenticator, name: str = "", **extra: str
) -> Any:
    started = await jpost(client, "/mfa/passkey/register/options", csrf, dict(extra))
    assert started.status == 200, await started.text()
    data = await started.json()
    return await jpost(
        client,
        "/mfa/passkey/register",
        csrf,
        {
            "handle": data["handle"],
            "credential": key.create(data["options"]),
            "name": name,
            **extra,
        },
    )


async def verify(client: Any, csrf: str, key: SoftAuthenticator, next_path: str, **wrong: str):
    started = await jpost(client, "/mfa/passkey/options", csrf)
    assert started.status == 200, await started.text()
    data = await started.json()
    return await jpost(
        client,
        "/mfa/passkey/verify",
        csrf,
        {
            "handle": data["handle"],
            "credential": key.get(data["options"], **wrong),
            "next": next_path,
        },
    )


async def no_response(client: Any, path: str) -> str:
    answer = await client.get(path, allow_redirects=False)
    assert "SAMLResponse" not in await answer.text()
    assert answer.status == 303
    return str(answer.headers["Location"])


async def test_register_a_passkey_then_it_is_the_second_factor(serve, world, sp_key):
    client = await serve(require_mfa=True)
    metadata = await (await client.get(f"{IDP_PATH}/metadata")).text()
    sp = make_sp(world.tmp, sp_key, metadata)
    key = device(world)

    # A first factor, right after the password: the security page offers a passkey.
    assert (await sign_in(client, "alice", next_path=IDP_PATH)).status == 303
    enrolment = await no_response(client, await no_response(client, IDP_PATH))
    assert path_of(enrolment) == "/account/security"
    csrf, page = await page_csrf(client, enrolment)
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "'unsafe-inline'" not in policy
    text = await page.text()
    assert '<script src="/static/passkey.js" defer></script>' in text
    assert "Adding a passkey needs JavaScript" in text  # the <noscript> part
    answer = await register(client, csrf, key, "<b>Laptop</b>", next=next_of(enrolment), enrol="1")
    assert answer.status == 200, await answer.text()
    done = (await answer.json())["next"]
    assert path_of(done) == "/account/security" and next_of(done) == IDP_PATH
    listed = await (await client.get(done)).text()
    assert "Your passkey is added." in listed
    assert "&lt;b&gt;Laptop&lt;/b&gt;" in listed and "<b>Laptop</b>" not in listed
    [record] = await world.store.factors("u-alice")
    assert record.kind == "passkey" and record.name == "<b>Laptop</b>"
    # The registration proved the passkey: this session goes on to the application.
    fields = hidden_fields(await (await client.get(IDP_PATH)).text())
    assert "SAMLResponse" in fields

    # A new browser: the password, then /mfa with the passkey button.
    client.session.cookie_jar.clear()
    world.clock.offset = 60
    assert (await sign_in(client, "alice", next_path=IDP_PATH)).status == 303
    challenge = await no_response(client, IDP_PATH)
    csrf, page = await page_csrf(client, challenge)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    text = await page.text()
    assert "data-passkey-signin" in text and "Passkeys need JavaScript" in text
    assert "Code from your authenticator app" not in text  # no TOTP: no code form

    # A refused assertion: still no Response.
    wrong = await verify(client, csrf, key, IDP_PATH, origin="http://evil.example")
    assert wrong.status == 400
    assert (await wrong.json()) == {"error": pk.NOT_VERIFIED}
    await no_response(client, IDP_PATH)
    assert [e["reason"] for e in audit(world, "mfa failed")] == ["assertion not verified"]

    world.clock.offset = 90
    verified_at = world.clock()
    good = await verify(client, csrf, key, IDP_PATH)
    assert good.status == 200 and (await good.json()) == {"next": IDP_PATH}
    page = await client.get(IDP_PATH)
    text = await page.text()
    assert form_action(text) == ACS
    response = sp.parse_authn_request_response(
        hidden_fields(text)["SAMLResponse"], BINDING_HTTP_POST
    )
    statement = response.assertion.authn_statement[0]
    assert statement.authn_context.authn_context_class_ref.text == AUTHN_REFEDS_MFA
    assert abs(_seconds(statement.authn_instant) - verified_at) < 1.5
    assert [e["factor"] for e in audit(world, "second factor passed")] == ["passkey", "passkey"]
    assert [e["factor"] for e in audit(world, "mfa used")] == ["passkey"]
    # The answer's next is a local path only.
    csrf, _ = await page_csrf(client, challenge)
    world.clock.offset = 120
    elsewhere = await verify(client, csrf, key, "https://evil.example/")
    assert (await elsewhere.json()) == {"next": "/"}


def _seconds(instant: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()


async def test_passkey_routes_refuse_bad_requests_plainly(client, world):
    anonymous = await client.post("/mfa/passkey/options", json={})
    assert anonymous.status == 401 and "error" in await anonymous.json()
    assert (await sign_in(client, "alice")).status == 303
    csrf, _ = await page_csrf(client, "/account/security")
    key = device(world)
    assert (await register(client, csrf, key)).status == 200

    for path in ("/mfa/passkey/options", "/mfa/passkey/register/options"):
        missing = await client.post(path, json={})
        assert missing.status == 403 and (await missing.json())["error"]
        wrong = await jpost(client, path, "x" * 43)
        assert wrong.status == 403
    # The token may come as a field of the body too.
    in_body = await client.post("/mfa/passkey/options", json={"csrf": csrf})
    assert in_body.status == 200

    headers = {"X-CSRF-Token": csrf}
    cases = [
        ({"data": b"{not json", "headers": {**headers, "Content-Type": "application/json"}}, 400),
        ({"data": b"[1, 2]", "headers": {**headers, "Content-Type": "application/json"}}, 400),
        ({"data": b"\xff\xfe", "headers": {**headers, "Content-Type": "application/json"}}, 400),
        ({"data": b"[" * 100_000, "headers": {**headers, "Content-Type": "application/json"}}, 413),
        ({"data": b"{}", "headers": {**headers, "Content-Type": "text/plain"}}, 415),
        ({"json": {"handle": "x", "credential": "nope"}, "headers": headers}, 400),
        ({"json": {"pad": "x" * (MAX_JSON_BYTES + 1)}, "headers": headers}, 413),
    ]
    for kwargs, status in cases:
        answer = await client.post("/mfa/passkey/verify", **kwargs)
        assert answer.status == status, (kwargs.get("data", b"")[:20], await answer.text())
        assert answer.content_type == "application/json"
        assert set(await answer.json()) == {"error"}

    # A chunked body announces no length: cut off all the same.
    async def chunks():
        for _ in range(80):
            yield b" " * 1024

    chunked = await client.post(
        "/mfa/passkey/verify",
        data=chunks(),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert chunked.status == 413
    # A handle that is not one: refused, audited.
    started = await jpost(client, "/mfa/passkey/options", csrf)
    options = (await started.json())["options"]
    unknown = await jpost(
        client, "/mfa/passkey/verify", csrf, {"handle": "made-up", "credential": key.get(options)}
    )
    assert unknown.status == 400 and (await unknown.json())["error"] == pk.CHALLENGE_GONE
    assert "Traceback" not in world.log.getvalue()
    assert not audit(world, "public request failed")


async def test_a_challenge_of_another_session_is_refused(client, world):
    # A second browser on the same server: its own cookie jar.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=world.base_url, cookie_jar=jar) as second:
        for c in (client, second):
            assert (await sign_in(c, "alice")).status == 303
        csrf_1, _ = await page_csrf(client, "/account/security")
        key = device(world)
        assert (await register(client, csrf_1, key)).status == 200
        csrf_2, _ = await page_csrf(second, "/mfa?next=/")
        # The first browser asks; the second answers with the first one's handle.
        started = await jpost(client, "/mfa/passkey/options", csrf_1)
        data = await started.json()
        stolen = await jpost(
            second,
            "/mfa/passkey/verify",
            csrf_2,
            {"handle": data["handle"], "credential": key.get(data["options"])},
        )
        assert stolen.status == 400 and (await stolen.json())["error"] == pk.CHALLENGE_GONE
        assert [e["reason"] for e in audit(world, "mfa failed")] == ["challenge of another session"]
        # Only the registration (first browser) passed a second factor.
        assert len(audit(world, "second factor passed")) == 1
        # The challenge stayed parked for the first browser, which uses it once.
        answer = {"handle": data["handle"], "credential": key.get(data["options"])}
        late = await jpost(client, "/mfa/passkey/verify", csrf_1, answer)
        assert late.status == 200
        assert len(audit(world, "second factor passed")) == 2
        again = await jpost(
            client,
            "/mfa/passkey/verify",
            csrf_1,
            {"handle": data["handle"], "credential": key.get(data["options"])},
        )
        assert again.status == 400 and (await again.json())["error"] == pk.CHALLENGE_GONE


async def test_adding_a_passkey_follows_the_rule_of_changes(client, world):
    world.clock.offset = -700  # a password older than pages.FRESH_PASSWORD (600 s)
    assert (await sign_in(client, "alice")).status == 303
    world.clock.offset = 0
    csrf, _ = await page_csrf(client, "/account/security")
    stale = await jpost(client, "/mfa/passkey/register/options", csrf)
    assert stale.status == 403
    body = await stale.json()
    assert body["error"] == CONFIRM_FIRST and path_of(body["go"]) == "/login"
    assert "force=1" in body["go"]

    # With a factor (TOTP) not yet passed in this session: /mfa first.
    assert (await sign_in(client, "alice")).status == 303
    await enrol(client, world)
    client.session.cookie_jar.clear()
    assert (await sign_in(client, "alice")).status == 303
    csrf, _ = await page_csrf(client, "/mfa?next=/")
    refused = await jpost(client, "/mfa/passkey/register/options", csrf)
    assert refused.status == 403 and path_of((await refused.json())["go"]) == "/mfa"
    # The register step itself checks too, not only the options.
    direct = await jpost(
        client,
        "/mfa/passkey/register",
        csrf,
        {"handle": "x", "credential": device(world).create(_fake_options())},
    )
    assert direct.status == 403
    assert await world.app[PORTAL].factors.kinds("u-alice") == {"totp"}
    # No passkey yet: nothing to verify with, and the /mfa page shows no passkey button.
    none = await jpost(client, "/mfa/passkey/options", csrf)
    assert none.status == 400 and (await none.json())["error"] == pk.NONE_REGISTERED
    page = await client.get("/mfa?next=/")
    assert "data-passkey-signin" not in await page.text()
    assert "script-src" not in page.headers["Content-Security-Policy"]


def _fake_options() -> dict[str, Any]:
    return {"challenge": "AAAA", "user": {"id": "AAAA"}}


async def test_rename_and_remove_on_the_security_page(client, world):
    assert (await sign_in(client, "alice")).status == 303
    csrf, _ = await page_csrf(client, "/account/security")
    key = device(world)
    assert (await register(client, csrf, key, "Laptop")).status == 200
    [record] = await world.store.factors("u-alice")
    page = await (await client.get("/account/security")).text()
    rename = form(page, "/mfa/passkey/rename", id=record.id)
    assert (await post(client, rename, csrf="", name="x")).status == 400
    renamed = await post(client, rename, name="  Work\tlaptop ")
    assert renamed.status == 303
    page = await (await client.get(renamed.headers["Location"])).text()
    assert "The passkey was renamed." in page and "Work laptop" in page
    assert [r.name for r in await world.store.factors("u-alice")] == ["Work laptop"]
    gone = await post(client, rename, id="not-a-passkey", name="y")
    assert (
        "That factor was already removed."
        in await (await client.get(gone.headers["Location"])).text()
    )

    removed = await post(client, form(page, "/account/security/remove", factor=record.id))
    assert removed.status == 303
    assert await world.store.factors("u-alice") == []
    assert [e["factor"] for e in audit(world, "mfa removed")] == ["passkey"]
    none = await jpost(client, "/mfa/passkey/options", csrf)
    assert none.status == 400


async def test_the_script_and_the_pages_without_it(client):
    script = await client.get("/static/passkey.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    body = await script.text()
    assert ".create({ publicKey: creationOptions" in body
    assert ".get({ publicKey: requestOptions" in body
    for path in ("/login", "/static/passkey.js"):
        policy = (await client.get(path)).headers["Content-Security-Policy"]
        assert "script-src" not in policy and "connect-src" not in policy
