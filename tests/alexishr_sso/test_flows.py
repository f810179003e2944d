"""pysaml2, configured as AlexisHR, accepts what the real routes answer, in both flows."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

from daemon.metrics import REGISTRY
from tests.alexishr_sso.conftest import (
    ACS,
    PASSWORD,
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


async def test_plain_visit_to_the_sign_out_url(client):
    await sign_in(client, "alice")
    page = await client.get(f"{IDP_PATH}/slo")
    assert page.status == 200
    assert "You have signed out of AlexisHR" in await page.text()
    # Still signed in to the portal: the page offers to sign out there too.
    assert (await client.get("/", allow_redirects=False)).status == 200


def test_password_is_a_registered_secret():
    from daemon.secrets import SECRETS

    assert PASSWORD not in SECRETS.redact(PASSWORD)
