"""pysaml2, configured as AlexisHR, accepts what the real routes answer, in both flows."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

from daemon.metrics import REGISTRY
from tests.alexishr_sso.conftest import (
    ACS,
    PASSWORD,
    directory_doc,
    form_action,
    hidden_fields,
    make_sp,
    sign_in,
)

IDP_PATH = "/saml2/alexishr"


async def _sp(client, world, sp_key):
    metadata = await (await client.get(f"{IDP_PATH}/metadata")).text()
    return make_sp(world.tmp, sp_key, metadata)


def _next_of(location: str) -> str:
    url = urlsplit(location)
    assert url.path == "/login"
    return parse_qs(url.query)["next"][0]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_idp_initiated_sign_in_from_the_portal(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    assert (await sign_in(client, "alice")).status == 303
    portal = await client.get("/")
    assert 'href="/saml2/alexishr">Open AlexisHR</a>' in await portal.text()

    issued = _metric("provisiond_saml_responses_total", application="alexishr")
    page = await client.get(IDP_PATH)
    assert page.status == 200
    text = await page.text()
    assert form_action(text) == ACS
    fields = hidden_fields(text)
    assert "RelayState" not in fields
    assert "form-action https://auth.alexishr.com" in page.headers["Content-Security-Policy"]

    response = sp.parse_authn_request_response(fields["SAMLResponse"], BINDING_HTTP_POST)
    assert response.name_id.text == "alice@nordlys.example"
    assert response.name_id.format.endswith("emailAddress")
    assert response.ava == {
        "email": ["alice@nordlys.example"],
        "firstName": ["Alice"],
        "lastName": ["Lindqvist"],
    }
    assert _metric("provisiond_saml_responses_total", application="alexishr") == issued + 1


async def test_idp_initiated_asks_to_sign_in_first_and_comes_back(client):
    first = await client.get(IDP_PATH, allow_redirects=False)
    assert first.status == 303
    assert _next_of(first.headers["Location"]) == IDP_PATH
    done = await sign_in(client, "alice", next_path=IDP_PATH)
    assert done.headers["Location"] == IDP_PATH


async def test_sp_initiated_redirect_binding(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    request_id, info = sp.prepare_for_authenticate(
        relay_state="opaque-sp-state", binding=BINDING_HTTP_REDIRECT
    )
    location = urlsplit(dict(info["headers"])["Location"])
    assert location.path == IDP_PATH
    # Not signed in yet: the request is accepted, parked, and waits for the login.
    parked = await client.get(f"{location.path}?{location.query}", allow_redirects=False)
    assert parked.status == 303
    assert _next_of(parked.headers["Location"]).startswith(f"{IDP_PATH}?resume=")
    next_path = hidden_fields(await (await client.get(parked.headers["Location"])).text())["next"]
    done = await sign_in(client, "alice", next_path=next_path)
    page = await client.get(done.headers["Location"])
    text = await page.text()
    assert form_action(text) == ACS
    fields = hidden_fields(text)
    assert fields["RelayState"] == "opaque-sp-state"
    response = sp.parse_authn_request_response(
        fields["SAMLResponse"], BINDING_HTTP_POST, outstanding={request_id: "/"}
    )
    assert response.in_response_to == request_id
    assert response.name_id.text == "alice@nordlys.example"


async def test_sp_initiated_post_binding_when_signed_in(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    await sign_in(client, "alice")
    request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_POST)
    fields = hidden_fields(info["data"])
    # The POST arrives from AlexisHR's site (no Lax cookie); it continues with a same-site GET.
    posted = await client.post(IDP_PATH, data=fields, allow_redirects=False)
    assert posted.status == 303
    assert posted.headers["Location"].startswith(f"{IDP_PATH}?resume=")
    page = await client.get(posted.headers["Location"])
    response = sp.parse_authn_request_response(
        hidden_fields(await page.text())["SAMLResponse"],
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.in_response_to == request_id
    # The handle works once.
    again = await client.get(posted.headers["Location"])
    assert again.status == 400


async def test_user_outside_the_bound_groups_gets_403(client, log_text):
    refused = _metric("provisiond_sso_refusals_total", reason="not_granted")
    await sign_in(client, "bob")
    portal = await (await client.get("/")).text()
    assert "AlexisHR" not in portal
    assert "No applications are assigned to you" in portal
    page = await client.get(IDP_PATH)
    assert page.status == 403
    assert "You have no access to AlexisHR" in await page.text()
    assert "SAMLResponse" not in await page.text()
    assert _metric("provisiond_sso_refusals_total", reason="not_granted") == refused + 1
    assert '"event": "sso refused: no access"' in log_text()
    assert '"user_id": "u-bob"' in log_text()


async def test_directory_changes_apply_at_the_next_cycle_without_restart(client, world):
    await sign_in(client, "carol")
    assert (await client.get(IDP_PATH)).status == 200
    # carol leaves the bound group: refused after one cycle, same process, same session.
    world.write_directory(directory_doc(members=["alice"]))
    await world.cycle()
    assert (await client.get(IDP_PATH)).status == 403
    # Back in the group, then suspended: the session ends and sign-in is refused.
    world.write_directory(directory_doc())
    await world.cycle()
    assert (await client.get(IDP_PATH)).status == 200
    world.write_directory(directory_doc(suspended=["carol"]))
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
    pem = await client.get(f"{IDP_PATH}/certificate.pem")
    assert await pem.text() == idp_key.certificate_pem
    assert "attachment" in pem.headers["Content-Disposition"]
    expiry = _metric("provisiond_saml_certificate_expiry_seconds", application="alexishr")
    assert 0 < expiry <= idp_key.seconds_until_expiry() + 1


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


async def test_plain_visit_to_the_sign_out_url(client):
    await sign_in(client, "alice")
    page = await client.get(f"{IDP_PATH}/slo")
    assert page.status == 200
    assert "You have signed out of AlexisHR" in await page.text()
    # Still signed in to the portal: the page offers to sign out there too.
    assert (await client.get("/", allow_redirects=False)).status == 200


async def test_idle_timeout_ends_the_session(serve):
    client = await serve(session_idle_timeout=0.000001)
    await sign_in(client, "alice")
    assert (await client.get("/", allow_redirects=False)).status == 303


def test_password_is_a_registered_secret():
    from daemon.secrets import SECRETS

    assert PASSWORD not in SECRETS.redact(PASSWORD)


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
    page = await client.get(IDP_PATH)
    response = sp.parse_authn_request_response(
        hidden_fields(await page.text())["SAMLResponse"], BINDING_HTTP_POST
    )
    assert _authn_instant(response) == _instant(signed_in_at)
    assert response.response.issue_instant != _instant(signed_in_at)


async def test_authn_instant_after_force_authn_is_the_new_sign_in(client, world, sp_key):
    sp = await _sp(client, world, sp_key)
    world.clock.offset = -1500
    first = world.clock()
    await sign_in(client, "alice")
    # AlexisHR asks for a fresh sign-in (ForceAuthn) 10 minutes later; alice signs in again.
    world.clock.offset = -900
    request_id, info = sp.prepare_for_authenticate(
        binding=BINDING_HTTP_REDIRECT, force_authn="true"
    )
    location = urlsplit(dict(info["headers"])["Location"])
    parked = await client.get(f"{location.path}?{location.query}", allow_redirects=False)
    assert parked.status == 303
    assert "force=1" in parked.headers["Location"]
    world.clock.offset = -600
    second = world.clock()
    done = await sign_in(client, "alice", next_path=_next_of(parked.headers["Location"]))
    world.clock.offset = 0
    page = await client.get(done.headers["Location"])
    response = sp.parse_authn_request_response(
        hidden_fields(await page.text())["SAMLResponse"],
        BINDING_HTTP_POST,
        outstanding={request_id: "/"},
    )
    assert response.in_response_to == request_id
    assert _authn_instant(response) == _instant(second)
    assert _authn_instant(response) != _instant(first)
