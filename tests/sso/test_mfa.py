"""The second factor in the sign-in flow, with pysaml2 as the application.

Policy, enrolment on ``/account/security``, the ``/mfa`` challenge, ForceAuthn
and IsPassive, recovery codes, and the direct requests that try to skip the
second factor. Codes come from pyotp with the key the enrolment page shows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.response import StatusNoPassive
from yarl import URL

from daemon.portal.mfa import pages
from daemon.portal.mfa.factors import Outcome
from daemon.portal.mfa.keys import STORE_KEY_ID
from daemon.portal.site import PORTAL
from daemon.saml.names import AUTHN_PASSWORD_PROTECTED_TRANSPORT, AUTHN_REFEDS_MFA
from tests.sso.conftest import ACS, IDP_PATH, make_options, make_sp
from tests.sso.mfa import (
    enrol,
    form,
    forms,
    next_of,
    pass_mfa,
    path_of,
    post,
    recovery_codes,
    shown_key,
    totp_code,
)
from tests.sso.stack import PASSWORD, form_action, hidden_fields, sign_in


async def _sp(client, world, sp_key):
    metadata = await (await client.get(f"{IDP_PATH}/metadata")).text()
    return make_sp(world.tmp, sp_key, metadata)


def _redirect(info) -> URL:
    location = urlsplit(dict(info["headers"])["Location"])
    return URL(f"{location.path}?{location.query}", encoded=True)


async def _no_response(client, path, *, to: str = "/mfa"):
    """``path`` answers with a redirect to ``to`` and no SAML Response; the redirect."""
    answer = await client.get(path, allow_redirects=False)
    text = await answer.text()
    assert "SAMLResponse" not in text
    assert answer.status == 303, (answer.status, text[:300])
    location = answer.headers["Location"]
    assert path_of(location) == to, location
    return location


async def _response(client, path):
    page = await client.get(path, allow_redirects=False)
    text = await page.text()
    assert page.status == 200, text[:500]
    assert form_action(text) == ACS
    return hidden_fields(text)


def _context(response) -> tuple[str, str]:
    """(AuthnContextClassRef, AuthnInstant) of a parsed pysaml2 response."""
    statement = response.assertion.authn_statement[0]
    return statement.authn_context.authn_context_class_ref.text, statement.authn_instant


def _when(response, context: str, start: float, end: float) -> None:
    """The response carries ``context``, and an AuthnInstant between ``start`` and ``end``
    (the portal clock's readings around the authentication step, to the second)."""
    ref, instant = _context(response)
    assert ref == context
    at = datetime.strptime(instant, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert int(start) <= at <= end, (instant, start, end)


def _audit(world, event: str) -> list[dict]:
    lines = [json.loads(line) for line in world.log.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == event]


def _new_browser(client) -> None:
    client.session.cookie_jar.clear()


async def test_without_the_policy_a_password_is_enough_even_with_a_factor(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    assert (await sign_in(client, "alice")).status == 303
    await enrol(client, world)
    _new_browser(client)
    world.clock.offset = 60
    start = world.clock()
    assert (await sign_in(client, "alice")).status == 303
    end = world.clock()
    world.clock.offset = 90
    response = sp.parse_authn_request_response(
        (await _response(client, IDP_PATH))["SAMLResponse"], BINDING_HTTP_POST
    )
    _when(response, AUTHN_PASSWORD_PROTECTED_TRANSPORT, start, end)
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
    response = sp.parse_authn_request_response(
        (await _response(client, _redirect(info)))["SAMLResponse"],
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert _context(response)[0] == AUTHN_PASSWORD_PROTECTED_TRANSPORT


async def test_without_a_factor_the_user_enrols_before_any_response(serve, world, sp_key):
    world.target.options = make_options(require_mfa=True)
    client = await serve()
    sp = await _sp(client, world, sp_key)
    request_id, info = sp.prepare_for_authenticate(
        relay_state="wiki-page-7", binding=BINDING_HTTP_REDIRECT
    )
    login = await _no_response(client, _redirect(info), to="/login")
    done = await sign_in(client, "alice", next_path=next_of(login))
    # Right after the password: the second step, and for a user without a factor, enrolment.
    challenge = await _no_response(client, done.headers["Location"])
    resume = next_of(challenge)
    assert resume.startswith(f"{IDP_PATH}?resume=")
    enrolment = await _no_response(client, challenge, to="/account/security")
    assert next_of(enrolment) == resume
    page = await (await client.get(enrolment)).text()
    assert "asks for a second step when you sign in" in page
    assert "<svg" in page and "<?xml" not in page
    key = shown_key(page)
    pending = form(page, "/account/security/totp").fields["pending"]
    assert key not in pending and key.lower() not in pending.lower()

    # Straight back to the SSO URL, or IdP-initiated: still no Response.
    resume = next_of(await _no_response(client, resume))
    assert next_of(await _no_response(client, IDP_PATH)) == IDP_PATH
    # Nor on /mfa itself: a user without a factor is sent on to enrol.
    await _no_response(client, f"/mfa?next={IDP_PATH}", to="/account/security")

    world.clock.offset = 5
    start = world.clock()
    _, codes, shown = await enrol(client, world, next_path=resume)
    end = world.clock()
    text = await shown.text()
    assert "This is the only time they are shown" in text
    assert f'href="{resume.replace("&", "&amp;")}"' in text
    assert len(set(codes)) == 10
    world.clock.offset = 10
    fields = await _response(client, resume)
    assert fields["RelayState"] == "wiki-page-7"
    response = sp.parse_authn_request_response(
        fields["SAMLResponse"], BINDING_HTTP_POST, outstanding={request_id: "/"}
    )
    assert response.in_response_to == request_id
    _when(response, AUTHN_REFEDS_MFA, start, end)
    assert _audit(world, "mfa enrolled")
    assert [e["factor"] for e in _audit(world, "second factor passed")] == ["totp"]


async def test_sign_in_with_a_code_says_mfa_and_when(serve, world, sp_key):
    client = await serve(require_mfa=True)
    sp = await _sp(client, world, sp_key)
    world.clock.offset = -900
    assert (await sign_in(client, "alice")).status == 303
    key, _, _ = await enrol(client, world)
    _new_browser(client)
    world.clock.offset = -600
    assert (await sign_in(client, "alice", next_path=IDP_PATH)).status == 303
    challenge = await _no_response(client, IDP_PATH)
    assert next_of(challenge) == IDP_PATH
    page = await (await client.get(challenge)).text()
    assert "Code from your authenticator app" in page
    world.clock.offset = -300
    start = world.clock()
    passed = await post(client, form(page, "/mfa", factor="totp"), code=totp_code(world, key))
    end = world.clock()
    assert (passed.status, passed.headers["Location"]) == (303, IDP_PATH)
    world.clock.offset = 0
    response = sp.parse_authn_request_response(
        (await _response(client, IDP_PATH))["SAMLResponse"], BINDING_HTTP_POST
    )
    assert response.name_id.text == "u-alice"
    # The code's time, five minutes after the password.
    _when(response, AUTHN_REFEDS_MFA, start, end)
    # The same session opens the application again without another code.
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
    again = sp.parse_authn_request_response(
        (await _response(client, _redirect(info)))["SAMLResponse"],
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert _context(again)[0] == AUTHN_REFEDS_MFA


async def test_direct_requests_that_skip_the_second_factor_are_refused(serve, world, sp_key):
    client = await serve(require_mfa=True)
    sp = await _sp(client, world, sp_key)
    portal = world.app[PORTAL]
    assert (await sign_in(client, "alice")).status == 303
    key, _, _ = await enrol(client, world)
    used_code = totp_code(world, key)
    _new_browser(client)
    world.clock.offset = 60
    assert (await sign_in(client, "alice")).status == 303  # a password, no second factor

    # The SSO URL, IdP-initiated, over the POST binding, and its resume handle again.
    await _no_response(client, IDP_PATH)
    _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
    posted = await client.post(IDP_PATH, data=hidden_fields(info["data"]), allow_redirects=False)
    resume = next_of(await _no_response(client, posted.headers["Location"]))
    second = next_of(await _no_response(client, resume))
    assert second != resume
    assert (await client.get(resume, allow_redirects=False)).status == 400  # used up

    # IsPassive cannot show /mfa: NoPassive, as without a session.
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT, is_passive="true")
    with pytest.raises(StatusNoPassive):
        sp.parse_authn_request_response(
            (await _response(client, _redirect(info)))["SAMLResponse"],
            BINDING_HTTP_POST,
            outstanding={request_id: "/"},
        )

    # Changes on /account/security want the second factor first.
    page = await (await client.get("/account/security")).text()
    assert "confirm it is you" in page
    assert not forms(page, "/account/security/remove") and "pending" not in page
    csrf = hidden_fields(page)["csrf"]
    for action, data in [
        ("/account/security/remove", {"factor": "totp"}),
        ("/account/security/recovery", {}),
        ("/account/security/totp", {"pending": "x", "code": totp_code(world, key)}),
    ]:
        answer = await client.post(action, data={"csrf": csrf, **data}, allow_redirects=False)
        assert answer.status == 303 and path_of(answer.headers["Location"]) == "/mfa", action
    assert await portal.factors.kinds("u-alice") == {"totp"}

    # /mfa: a POST without its CSRF token, a wrong code, a replayed code.
    page = await (await client.get("/mfa", params={"next": IDP_PATH})).text()
    totp_form = form(page, "/mfa", factor="totp")
    no_csrf = await post(client, totp_form, csrf="", code=totp_code(world, key))
    assert no_csrf.status == 400
    wrong = await post(client, totp_form, code="000000" if used_code != "000000" else "111111")
    assert wrong.status == 401 and pages.CODE_WRONG in await wrong.text()
    world.clock.offset = 0
    replayed = await post(client, totp_form, code=used_code)
    assert replayed.status == 401 and pages.CODE_REPLAYED in await replayed.text()
    malformed = await post(client, totp_form, code="12ab")
    assert malformed.status == 401 and pages.CODE_MALFORMED in await malformed.text()
    assert {e["result"] for e in _audit(world, "mfa failed")} >= {
        "failure",
        "replayed",
        "malformed",
    }
    assert not _audit(world, "saml response issued")
    # Passed at last, and sent only to a local path.
    world.clock.offset = 120
    page = await (await client.get("/mfa", params={"next": "https://evil.example/"})).text()
    passed = await post(client, form(page, "/mfa", factor="totp"), code=totp_code(world, key))
    assert passed.headers["Location"] == "/"
    await _response(client, IDP_PATH)


async def test_force_authn_needs_a_fresh_password_and_a_fresh_second_factor(serve, world, sp_key):
    world.target.options = make_options(require_mfa=True)
    client = await serve()
    sp = await _sp(client, world, sp_key)
    world.clock.offset = -900
    assert (await sign_in(client, "alice")).status == 303
    key, _, _ = await enrol(client, world)  # password and second factor, 15 minutes ago
    world.clock.offset = -600
    request_id, info = sp.prepare_for_authenticate(
        binding=BINDING_HTTP_REDIRECT, force_authn="true"
    )
    login = await _no_response(client, _redirect(info), to="/login")
    assert "force=1" in login
    # Coming back without a new password is not enough.
    login = await _no_response(client, next_of(login), to="/login")
    world.clock.offset = -500
    done = await sign_in(client, "alice", next_path=next_of(login))
    # A fresh password, but the second factor predates the request.
    challenge = await _no_response(client, done.headers["Location"])
    world.clock.offset = -400
    start = world.clock()
    passed = await pass_mfa(client, world, key, next_of(challenge))
    end = world.clock()
    world.clock.offset = 0
    response = sp.parse_authn_request_response(
        (await _response(client, passed.headers["Location"]))["SAMLResponse"],
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    _when(response, AUTHN_REFEDS_MFA, start, end)


async def test_changes_need_a_password_typed_in_the_last_minutes(client, world):
    portal = world.app[PORTAL]
    world.clock.offset = -650
    assert (await sign_in(client, "alice")).status == 303
    world.clock.offset = -250
    page = await (await client.get("/account/security")).text()
    key, confirm = shown_key(page), form(page, "/account/security/totp")
    # The password is now 650 s old: the enrolment form shown 250 s ago is not accepted.
    world.clock.offset = 0
    stale = await post(client, confirm, code=totp_code(world, key))
    assert stale.status == 303
    location = stale.headers["Location"]
    assert path_of(location) == "/login" and "force=1" in location
    assert next_of(location) == "/account/security"
    assert await portal.factors.kinds("u-alice") == frozenset()
    page = await (await client.get("/account/security")).text()
    assert "pending" not in page and "/login?next=%2Faccount%2Fsecurity&amp;force=1" in page
    # After a new password: a new session, in which the old form does not open either.
    assert (await sign_in(client, "alice")).status == 303
    page = await (await client.get("/account/security")).text()
    csrf = form(page, "/account/security/totp").fields["csrf"]
    other = await post(client, confirm, csrf=csrf, code=totp_code(world, key))
    assert other.status == 400 and pages.FORM_EXPIRED in await other.text()
    assert await portal.factors.kinds("u-alice") == frozenset()
    await enrol(client, world)
    assert await portal.factors.kinds("u-alice") == {"totp"}


async def test_a_recovery_code_works_once(serve, world, sp_key):
    client = await serve(require_mfa=True)
    sp = await _sp(client, world, sp_key)
    assert (await sign_in(client, "alice")).status == 303
    _, codes, _ = await enrol(client, world)
    for attempt in range(2):
        _new_browser(client)
        assert (await sign_in(client, "alice")).status == 303
        page = await (await client.get("/mfa", params={"next": IDP_PATH})).text()
        assert "Use a recovery code instead" in page
        answer = await post(client, form(page, "/mfa", factor="recovery"), code=codes[0])
        if attempt == 0:
            assert (answer.status, answer.headers["Location"]) == (303, IDP_PATH)
            response = sp.parse_authn_request_response(
                (await _response(client, IDP_PATH))["SAMLResponse"], BINDING_HTTP_POST
            )
            assert _context(response)[0] == AUTHN_REFEDS_MFA
        else:
            assert answer.status == 401
            text = await answer.text()
            assert pages.RECOVERY_WRONG in text and "<details open>" in text
            await _no_response(client, IDP_PATH)
    # Another code, typed in capitals with spaces, still works.
    page = await (await client.get("/mfa", params={"next": IDP_PATH})).text()
    typed = codes[1].upper().replace("-", " ")
    answer = await post(client, form(page, "/mfa", factor="recovery"), code=typed)
    assert answer.status == 303
    assert [e["factor"] for e in _audit(world, "mfa used")] == ["recovery", "recovery"]


async def test_wrong_codes_are_throttled_per_account(serve, world):
    client = await serve(require_mfa=True, mfa_max_failures=2)
    assert (await sign_in(client, "alice")).status == 303
    key, _, _ = await enrol(client, world)
    _new_browser(client)
    world.clock.offset = 60
    assert (await sign_in(client, "alice")).status == 303
    page = await (await client.get("/mfa")).text()
    totp_form = form(page, "/mfa", factor="totp")
    right = totp_code(world, key)
    for _ in range(2):
        assert (await post(client, totp_form, code=f"{(int(right) + 1) % 10**6:06d}")).status == 401
    held = await post(client, totp_form, code=right)
    assert held.status == 429 and pages.THROTTLED in await held.text()
    recovery = await post(client, form(page, "/mfa", factor="recovery"), code="abcd-efgh-ijkl")
    assert recovery.status == 429


async def test_manage_factors_new_recovery_codes_and_remove(client, world):
    portal = world.app[PORTAL]
    assert (await sign_in(client, "alice")).status == 303
    _, old_codes, _ = await enrol(client, world)
    page = await (await client.get("/account/security")).text()
    assert "Authenticator app" in page and "10 unused recovery codes" in page
    assert "pending" not in page  # one authenticator app at a time
    new = await post(client, form(page, "/account/security/recovery"))
    assert new.status == 200
    new_codes = recovery_codes(await new.text())
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    assert "Your earlier recovery codes no longer work" in await new.text()
    assert await portal.factors.use_recovery_code("u-alice", old_codes[0]) is Outcome.FAILURE
    assert await portal.factors.use_recovery_code("u-alice", new_codes[0]) is Outcome.SUCCESS

    removed = await post(client, form(page, "/account/security/remove", factor="totp"))
    assert removed.status == 303
    page = await (await client.get(removed.headers["Location"])).text()
    assert "The factor was removed." in page and "You have no second factor yet." in page
    assert await portal.factors.kinds("u-alice") == frozenset()
    assert [e["factor"] for e in _audit(world, "mfa removed")] == ["totp"]
    # The portal page links here.
    assert 'href="/account/security"' in await (await client.get("/")).text()


async def test_signed_out_the_pages_ask_for_a_password(client):
    for path in ("/mfa?next=/x", "/account/security"):
        answer = await client.get(path, allow_redirects=False)
        assert answer.status == 303 and path_of(answer.headers["Location"]) == "/login"
    answer = await client.post("/mfa", data={"code": "123456"}, allow_redirects=False)
    assert answer.status == 303 and path_of(answer.headers["Location"]) == "/login"
    assert PASSWORD  # the stack's password, registered as a secret for the leak checks


async def test_the_request_parked_for_the_second_factor_stays_with_its_browser(
    serve, world, sp_key
):
    client = await serve(require_mfa=True)
    sp = await _sp(client, world, sp_key)
    assert (await sign_in(client, "alice")).status == 303
    key, _, _ = await enrol(client, world)
    _new_browser(client)
    world.clock.offset = 60
    assert (await sign_in(client, "alice")).status == 303
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
    resume = next_of(await _no_response(client, _redirect(info)))
    mine = client.session.cookie_jar.filter_cookies(URL(world.base_url))
    # Another browser, even one signed in as alice and past her second factor, cannot use it.
    _new_browser(client)
    assert (await sign_in(client, "alice")).status == 303
    world.clock.offset = 90
    assert (await pass_mfa(client, world, key)).status == 303
    other = await client.get(resume, allow_redirects=False)
    assert other.status == 400 and "SAMLResponse" not in await other.text()
    # Its own browser still can, after the code.
    _new_browser(client)
    client.session.cookie_jar.update_cookies(mine)
    world.clock.offset = 120
    passed = await pass_mfa(client, world, key, resume)
    assert passed.headers["Location"] == resume
    response = sp.parse_authn_request_response(
        (await _response(client, resume))["SAMLResponse"],
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.in_response_to == request_id


async def test_enrolment_on_a_replica_whose_key_is_not_the_stores_is_refused(client, world):
    # Another replica with its own generated key took the store's key id over
    # before anyone enrolled: what this one sealed would not open there.
    portal = world.app[PORTAL]
    await world.store.set_meta(STORE_KEY_ID, "another-replicas-key")
    assert (await sign_in(client, "alice")).status == 303
    page = await (await client.get("/account/security")).text()
    confirm = form(page, "/account/security/totp")
    answer = await post(client, confirm, code=totp_code(world, shown_key(page)))
    assert answer.status == 503
    assert pages.KEY_NOT_SHARED in await answer.text()
    assert await portal.factors.kinds("u-alice") == frozenset()
