"""The sign-on endpoint with pysaml2 as an application configured from its ``sso`` block alone."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.response import StatusNoPassive
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID
from yarl import URL

from daemon.metrics import REGISTRY
from daemon.saml.endpoint import profiles_of, sign_on_routes
from daemon.saml.keys import generate_signing_key, write_signing_key
from daemon.saml.names import NS_DS, NS_MD, NS_SAML, SIG_RSA_SHA256
from daemon.saml.request import AuthnRequest
from tests.sso.conftest import ACS, BOUND, IDP_PATH, make_options, make_sp
from tests.sso.stack import SsoTarget, directory_doc, form_action, hidden_fields, sign_in


async def _metadata(client) -> str:
    return await (await client.get(f"{IDP_PATH}/metadata")).text()


async def _sp(client, world, sp_key, **service):
    return make_sp(world.tmp, sp_key, await _metadata(client), **service)


def _next_of(location: str) -> str:
    url = urlsplit(location)
    assert url.path == "/login"
    return parse_qs(url.query)["next"][0]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _redirect(info) -> URL:
    """The SP's redirect as it was written: a re-encoded query would break its signature."""
    location = urlsplit(dict(info["headers"])["Location"])
    assert location.path == IDP_PATH
    return URL(f"{location.path}?{location.query}", encoded=True)


async def _saml_response(client, path: str | URL = IDP_PATH) -> str:
    page = await client.get(path)
    assert page.status == 200, await page.text()
    text = await page.text()
    assert form_action(text) == ACS
    return hidden_fields(text)["SAMLResponse"]


async def test_idp_initiated_sends_the_configured_name_id_and_attributes(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    assert (await sign_in(client, "alice")).status == 303
    portal = await client.get("/")
    assert f'href="{IDP_PATH}">Open Team Wiki</a>' in await portal.text()

    issued = _metric("provisiond_saml_responses_total", application="wiki")
    page = await client.get(IDP_PATH)
    text = await page.text()
    assert form_action(text) == ACS
    assert "RelayState" not in hidden_fields(text)
    assert "form-action https://wiki.example.test" in page.headers["Content-Security-Policy"]
    response = sp.parse_authn_request_response(
        hidden_fields(text)["SAMLResponse"], BINDING_HTTP_POST
    )
    assert response.name_id.text == "u-alice"
    assert response.name_id.format == NAMEID_FORMAT_PERSISTENT
    # alice has no title in the directory: that attribute is left out, not sent empty.
    assert response.ava == {
        "mail": ["alice@nordlys.example"],
        "givenName": ["Alice"],
        "sn": ["Lindqvist"],
    }
    assert _metric("provisiond_saml_responses_total", application="wiki") == issued + 1

    # A value the directory gains is sent from the next cycle on.
    world.write_directory(directory_doc(BOUND, extra={"alice": {"title": "Chief Gardener"}}))
    await world.cycle()
    again = sp.parse_authn_request_response(await _saml_response(client), BINDING_HTTP_POST)
    assert again.ava["title"] == ["Chief Gardener"]


async def test_sp_initiated_request_is_parked_until_sign_in(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    request_id, info = sp.prepare_for_authenticate(
        relay_state="wiki-page-42", binding=BINDING_HTTP_REDIRECT
    )
    parked = await client.get(_redirect(info), allow_redirects=False)
    assert parked.status == 303
    next_path = _next_of(parked.headers["Location"])
    assert next_path.startswith(f"{IDP_PATH}?resume=")
    done = await sign_in(client, "alice", next_path=next_path)
    assert done.headers["Location"] == next_path
    page = await client.get(next_path)
    fields = hidden_fields(await page.text())
    assert fields["RelayState"] == "wiki-page-42"
    response = sp.parse_authn_request_response(
        fields["SAMLResponse"], BINDING_HTTP_POST, outstanding={request_id: "/"}
    )
    assert response.in_response_to == request_id
    assert response.name_id.text == "u-alice"
    # The handle was used up.
    assert (await client.get(next_path)).status == 400


async def test_post_binding_continues_through_a_same_site_get(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    await sign_in(client, "alice")
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
    posted = await client.post(IDP_PATH, data=hidden_fields(info["data"]), allow_redirects=False)
    assert posted.status == 303
    assert posted.headers["Location"].startswith(f"{IDP_PATH}?resume=")
    response = sp.parse_authn_request_response(
        await _saml_response(client, posted.headers["Location"]),
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.in_response_to == request_id


async def test_a_parked_request_is_bound_to_the_browser_that_started_it(
    client, world, sp_key, log_text
):
    sp = await _sp(client, world, sp_key)
    other = TestClient(client.server)  # a second browser: its own cookies, the same IdP
    await other.start_server()
    wrong = _metric("provisiond_sso_refusals_total", reason="wrong_browser")
    try:
        # HTTP-Redirect: A's request is parked while A signs in.
        request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
        parked = await client.get(_redirect(info), allow_redirects=False)
        resume = _next_of(parked.headers["Location"])
        # B cannot use A's handle: signed out, nor signed in as someone else.
        refused = await other.get(resume)
        assert refused.status == 400 and "expired" in await refused.text()
        await sign_in(other, "carol")
        refused = await other.get(resume)
        assert refused.status == 400 and "expired" in await refused.text()
        assert "SAMLResponse" not in await refused.text()
        # A still can, after signing in (the binding outlives the pre-session cookie).
        done = await sign_in(client, "alice", next_path=resume)
        assert done.headers["Location"] == resume
        answer = sp.parse_authn_request_response(
            await _saml_response(client, resume), BINDING_HTTP_POST, outstanding={request_id: "/"}
        )
        assert answer.name_id.text == "u-alice"
        # HTTP-POST: the browser binding is set on the 303 that answers the POST.
        request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
        posted = await client.post(
            IDP_PATH, data=hidden_fields(info["data"]), allow_redirects=False
        )
        resume = posted.headers["Location"]
        assert (await other.get(resume)).status == 400
        answer = sp.parse_authn_request_response(
            await _saml_response(client, resume), BINDING_HTTP_POST, outstanding={request_id: "/"}
        )
        assert answer.name_id.text == "u-alice"
        # A browser that never had the cookie (or lost it) is refused too.
        request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
        posted = await other.post(IDP_PATH, data=hidden_fields(info["data"]), allow_redirects=False)
        resume = posted.headers["Location"]
        other.session.cookie_jar.clear(lambda cookie: cookie.key == "provisiond_browser")
        assert (await other.get(resume)).status == 400
    finally:
        await other.close()
    assert _metric("provisiond_sso_refusals_total", reason="wrong_browser") == wrong + 4
    assert log_text().count('"reason": "wrong_browser"') == 4


async def test_a_request_parked_before_browser_binding_is_refused_cleanly(client, world, log_text):
    # What provisiond parked before requests were bound to a browser: the bare request.
    old = AuthnRequest(
        id="_parked-by-an-older-version",
        issuer="https://wiki.example.test/saml/metadata",
        issue_instant=datetime.now(UTC),
        acs_url=ACS,
        binding=BINDING_HTTP_POST,
        relay_state=None,
        force_authn=False,
        is_passive=False,
        name_id_policy_format=None,
        signed=False,
    )
    now = world.clock()
    await world.store.park(
        f"saml {IDP_PATH} old-handle", old.to_json(), now, now + 600, now, 10_000
    )
    await sign_in(client, "alice")
    refused = await client.get(f"{IDP_PATH}?resume=old-handle")
    assert refused.status == 400 and "expired" in await refused.text()
    assert "Traceback" not in log_text()


async def test_force_authn_asks_for_a_new_sign_in_even_when_signed_in(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    await sign_in(client, "alice")
    _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT, force_authn="true")
    parked = await client.get(_redirect(info), allow_redirects=False)
    assert parked.status == 303
    assert "force=1" in parked.headers["Location"]
    # Coming back without signing in again is not enough: the sign-in predates the request.
    again = await client.get(_next_of(parked.headers["Location"]), allow_redirects=False)
    assert again.status == 303
    assert "force=1" in again.headers["Location"]
    # The login form is shown although the browser has a session.
    form = await client.get(again.headers["Location"])
    assert hidden_fields(await form.text())["next"] == _next_of(again.headers["Location"])


async def test_is_passive_answers_no_passive_instead_of_a_login_page(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    refused = _metric("provisiond_sso_refusals_total", reason="no_passive")
    request_id, info = sp.prepare_for_authenticate(
        binding=BINDING_HTTP_REDIRECT, is_passive="true", relay_state="rs-1"
    )
    page = await client.get(_redirect(info), allow_redirects=False)
    assert page.status == 200
    text = await page.text()
    assert form_action(text) == ACS
    assert hidden_fields(text)["RelayState"] == "rs-1"
    with pytest.raises(StatusNoPassive):
        sp.parse_authn_request_response(
            hidden_fields(text)["SAMLResponse"],
            BINDING_HTTP_POST,
            outstanding={request_id: "/"},
        )
    assert _metric("provisiond_sso_refusals_total", reason="no_passive") == refused + 1
    # Signed in, the same kind of request is answered at once.
    await sign_in(client, "alice")
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT, is_passive="true")
    response = sp.parse_authn_request_response(
        await _saml_response(client, _redirect(info)),
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.name_id.text == "u-alice"


def _authn_instant(response) -> str:
    return response.assertion.authn_statement[0].authn_instant


def _instant(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_authn_instant_is_when_the_user_signed_in(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    # Signed in 50 minutes ago, seen on the portal 25 minutes ago (within the idle timeout).
    world.clock.offset = -3000
    signed_in_at = world.clock()
    assert (await sign_in(client, "alice")).status == 303
    world.clock.offset = -1500
    assert (await client.get("/", allow_redirects=False)).status == 200
    world.clock.offset = 0
    response = sp.parse_authn_request_response(await _saml_response(client), BINDING_HTTP_POST)
    assert _authn_instant(response) == _instant(signed_in_at)
    assert response.response.issue_instant != _instant(signed_in_at)


async def test_authn_instant_after_force_authn_is_the_new_sign_in(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    world.clock.offset = -1500
    first = world.clock()
    await sign_in(client, "alice")
    # The SP asks for a fresh sign-in (ForceAuthn) 10 minutes later; alice signs in again.
    world.clock.offset = -900
    request_id, info = sp.prepare_for_authenticate(
        binding=BINDING_HTTP_REDIRECT, force_authn="true"
    )
    parked = await client.get(_redirect(info), allow_redirects=False)
    assert parked.status == 303
    assert "force=1" in parked.headers["Location"]
    world.clock.offset = -600
    second = world.clock()
    done = await sign_in(client, "alice", next_path=_next_of(parked.headers["Location"]))
    world.clock.offset = 0
    response = sp.parse_authn_request_response(
        await _saml_response(client, done.headers["Location"]),
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.in_response_to == request_id
    assert _authn_instant(response) == _instant(second)
    assert _authn_instant(response) != _instant(first)


async def test_logout_request_ends_the_session_it_names(serve, world, sp_key):
    browser = await serve()
    sp = await _sp(browser, world, sp_key)
    await sign_in(browser, "alice")
    response = sp.parse_authn_request_response(await _saml_response(browser), BINDING_HTTP_POST)
    session_index = response.assertion.authn_statement[0].session_index
    slo_url = f"{world.base_url}{IDP_PATH}/slo"
    name_id = NameID(format=NAMEID_FORMAT_PERSISTENT, text="u-alice")
    _, request = sp.create_logout_request(
        slo_url, f"{world.base_url}{IDP_PATH}", name_id=name_id, session_indexes=[session_index]
    )
    info = sp.apply_binding(BINDING_HTTP_REDIRECT, str(request), slo_url, "")
    location = urlsplit(dict(info["headers"])["Location"])
    # Another client, without alice's cookie: the SessionIndex alone names the session.
    async with ClientSession() as back_channel:
        page = await back_channel.get(f"{world.base_url}{location.path}?{location.query}")
        assert page.status == 200
        assert "You are signed out" in await page.text()
    assert (await browser.get("/", allow_redirects=False)).status == 303
    # The same LogoutRequest again is a replay.
    replayed = await browser.get(f"{location.path}?{location.query}")
    assert replayed.status == 400
    assert "already used" in await replayed.text()


async def test_directory_changes_apply_at_the_next_cycle_without_restart(client, world):
    await sign_in(client, "carol")
    assert (await client.get(IDP_PATH)).status == 200
    # carol leaves the bound group: refused after one cycle, same process, same session.
    world.write_directory(directory_doc(BOUND, members=["alice"]))
    await world.cycle()
    assert (await client.get(IDP_PATH)).status == 403
    # Back in the group, then suspended: the session ends and sign-in is refused.
    world.write_directory(directory_doc(BOUND))
    await world.cycle()
    assert (await client.get(IDP_PATH)).status == 200
    world.write_directory(directory_doc(BOUND, suspended=["carol"]))
    await world.cycle()
    gone = await client.get(IDP_PATH, allow_redirects=False)
    assert gone.status == 303
    assert gone.headers["Location"].startswith("/login")
    assert (await sign_in(client, "carol")).status == 401


async def test_metadata_and_certificate_routes(client, world, idp_key):
    metadata = await client.get(f"{IDP_PATH}/metadata")
    assert metadata.content_type == "application/samlmetadata+xml"
    body = await metadata.text()
    assert f'entityID="{world.base_url}{IDP_PATH}"' in body
    assert f'Location="{world.base_url}{IDP_PATH}/slo"' in body
    assert f"<md:NameIDFormat>{NAMEID_FORMAT_PERSISTENT}</md:NameIDFormat>" in body
    pem = await client.get(f"{IDP_PATH}/certificate.pem")
    assert await pem.text() == idp_key.certificate_pem
    assert "attachment" in pem.headers["Content-Disposition"]
    assert 'filename="wiki-certificate.pem"' in pem.headers["Content-Disposition"]
    expiry = _metric("provisiond_saml_certificate_expiry_seconds", application="wiki")
    assert 0 < expiry <= idp_key.seconds_until_expiry() + 1


def _published(metadata: str) -> list[str]:
    root = etree.fromstring(metadata.encode())
    return [
        "".join((e.text or "").split())
        for e in root.iter(f"{{{NS_DS}}}X509Certificate")
        if e.getparent() is not None
    ]


async def test_key_rotation_needs_no_restart(serve, world, idp_key, sp_key):
    nxt = generate_signing_key("provisiond test IdP (next)")
    write_signing_key(nxt, world.tmp / "idp-next.key", world.tmp / "idp-next.crt")
    world.target.options = make_options(next_cert_file="idp-next.crt")
    client = await serve()
    # Step 2: both certificates are published, the current one signs.
    published = _published(await _metadata(client))
    assert published == [idp_key.certificate_base64, nxt.certificate_base64]
    await sign_in(client, "alice")
    old_sp = await _sp(client, world, sp_key)
    assert old_sp.parse_authn_request_response(await _saml_response(client), BINDING_HTTP_POST)
    # Step 3: the files switch to the new pair; the next request signs with it.
    write_signing_key(nxt, world.tmp / "idp.key", world.tmp / "idp.crt")
    assert await (await client.get(f"{IDP_PATH}/certificate.pem")).text() == nxt.certificate_pem
    new_sp = make_sp(world.tmp, sp_key, await _metadata(client))
    assert new_sp.parse_authn_request_response(await _saml_response(client), BINDING_HTTP_POST)
    # A key file that goes missing, or a certificate that does not load, keeps the key.
    (world.tmp / "idp.key").unlink()
    assert await (await client.get(f"{IDP_PATH}/certificate.pem")).text() == nxt.certificate_pem
    (world.tmp / "idp.crt").write_text("not a certificate")
    assert await (await client.get(f"{IDP_PATH}/certificate.pem")).text() == nxt.certificate_pem
    assert new_sp.parse_authn_request_response(await _saml_response(client), BINDING_HTTP_POST)
    assert "the previous key stays" in world.log.getvalue()


async def test_signed_requests_when_the_sp_signs_them(serve, world, sp_key):
    write_signing_key(sp_key, world.tmp / "sp.key", world.tmp / "sp.crt")
    world.target.options = make_options(want_requests_signed=True, sp_cert_file="sp.crt")
    client = await serve()
    metadata = await _metadata(client)
    root = etree.fromstring(metadata.encode())
    assert root.find(f"{{{NS_MD}}}IDPSSODescriptor").get("WantAuthnRequestsSigned") == "true"
    sp = make_sp(world.tmp, sp_key, metadata, authn_requests_signed=True)
    await sign_in(client, "alice")
    request_id, info = sp.prepare_for_authenticate(
        binding=BINDING_HTTP_REDIRECT, sign=True, sigalg=SIG_RSA_SHA256
    )
    response = sp.parse_authn_request_response(
        await _saml_response(client, _redirect(info)),
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.in_response_to == request_id
    _, unsigned = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT, sign=False)
    refused = await client.get(_redirect(unsigned))
    assert refused.status == 400
    assert "signed" in await refused.text()


@pytest.mark.parametrize(("sign_response", "sign_assertion"), [(True, False), (False, True)])
async def test_signing_follows_the_sso_block(serve, world, sp_key, sign_response, sign_assertion):
    world.target.options = make_options(sign_response=sign_response, sign_assertion=sign_assertion)
    client = await serve()
    sp = make_sp(
        world.tmp,
        sp_key,
        await _metadata(client),
        want_response_signed=sign_response,
        want_assertions_signed=sign_assertion,
    )
    await sign_in(client, "alice")
    encoded = await _saml_response(client)
    assert sp.parse_authn_request_response(encoded, BINDING_HTTP_POST) is not None
    root = etree.fromstring(base64.b64decode(encoded))
    assert (root.find(f"{{{NS_DS}}}Signature") is not None) is sign_response
    assertion = root.find(f"{{{NS_SAML}}}Assertion")
    assert (assertion.find(f"{{{NS_DS}}}Signature") is not None) is sign_assertion


async def test_user_without_a_name_id_value_is_refused(serve, world, log_text):
    world.target.options = make_options(name_id_field="employee_id")
    client = await serve()
    refused = _metric("provisiond_sso_refusals_total", reason="no_name_id")
    await sign_in(client, "alice")
    page = await client.get(IDP_PATH)
    assert page.status == 403
    text = await page.text()
    assert "Your account has no employee id" in text
    assert "SAMLResponse" not in text
    assert _metric("provisiond_sso_refusals_total", reason="no_name_id") == refused + 1


def test_only_targets_that_give_a_profile_get_routes(world):
    disabled = SsoTarget("off", make_options(enabled=False), world.target.context)
    unconfigured = SsoTarget("none", None, world.target.context)
    targets = {"wiki": world.target, "off": disabled, "none": unconfigured, "log": object()}
    assert list(profiles_of(targets)) == ["wiki"]
    paths = {route.path for route in sign_on_routes(profiles_of(targets), world.directory)}
    assert paths == {
        IDP_PATH,
        f"{IDP_PATH}/metadata",
        f"{IDP_PATH}/certificate.pem",
        f"{IDP_PATH}/slo",
    }


async def test_logout_revokes_the_session(client):
    await sign_in(client, "alice")
    portal = await (await client.get("/")).text()
    csrf = hidden_fields(portal)["csrf"]
    cookies = {c.key: c.value for c in client.session.cookie_jar}
    out = await client.post("/logout", data={"csrf": csrf})
    assert out.status == 200
    assert "You have signed out" in await out.text()
    # The old cookie, replayed, is no longer a session: revoked server-side.
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies(cookies)
    again = await client.get("/", allow_redirects=False)
    assert again.status == 303


async def test_idle_timeout_ends_the_session(serve):
    client = await serve(session_idle_timeout=0.000001)
    await sign_in(client, "alice")
    assert (await client.get("/", allow_redirects=False)).status == 303
