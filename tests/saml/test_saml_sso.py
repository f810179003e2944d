"""pysaml2, a real SP, accepts the engine's responses and refuses tampered ones."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.response import StatusRequestDenied

from daemon.saml.bindings import decode_redirect
from daemon.saml.metadata import idp_metadata
from daemon.saml.names import NS_DS, NS_SAML, STATUS_REQUEST_DENIED, STATUS_RESPONDER
from daemon.saml.parties import IdentityProvider, ServiceProvider
from daemon.saml.replay import MemoryRequestIdStore
from daemon.saml.request import receive_authn_request
from daemon.saml.response import Principal, build_response, build_status_response
from tests.saml.conftest import ACS, AUDIENCE, IDP_ENTITY, SLO_URL, SSO_URL, SpFactory

ALICE = Principal(
    name_id="alice@example.com",
    attributes={"email": ["alice@example.com"], "firstName": ["Alice"], "lastName": ["Ng"]},
)


def _b64(xml: bytes) -> str:
    return base64.b64encode(xml).decode()


def test_idp_initiated_response_is_accepted(client, idp, sp):
    response = client.parse_authn_request_response(
        _b64(build_response(idp, sp, ALICE)), BINDING_HTTP_POST
    )
    assert response is not None
    assert response.name_id.text == "alice@example.com"
    assert response.ava == {
        "email": ["alice@example.com"],
        "firstName": ["Alice"],
        "lastName": ["Ng"],
    }
    assert response.assertion.authn_statement[0].session_index == ALICE.session_index


@pytest.mark.parametrize(
    ("sign_assertion", "sign_response"), [(True, False), (False, True), (True, True)]
)
def test_signing_switches(pysaml2_sp: SpFactory, idp, sign_assertion, sign_response):
    sp = ServiceProvider(
        entity_id=AUDIENCE, acs_url=ACS, sign_assertion=sign_assertion, sign_response=sign_response
    )
    client = pysaml2_sp(
        idp_metadata(idp),
        want_response_signed=sign_response,
        want_assertions_signed=sign_assertion,
    )
    xml = build_response(idp, sp, ALICE)
    root = etree.fromstring(xml)
    assert (root.find(f"{{{NS_DS}}}Signature") is not None) is sign_response
    assertion = root.find(f"{{{NS_SAML}}}Assertion")
    assert (assertion.find(f"{{{NS_DS}}}Signature") is not None) is sign_assertion
    assert client.parse_authn_request_response(_b64(xml), BINDING_HTTP_POST) is not None


async def test_sp_initiated_redirect_round_trip(client, idp, sp):
    request_id, info = client.prepare_for_authenticate(
        entityid=idp.entity_id, relay_state="/home", binding=BINDING_HTTP_REDIRECT
    )
    location = dict(info["headers"])["Location"]
    assert location.startswith(idp.sso_url)
    message = decode_redirect(urlsplit(location).query)
    assert message.relay_state == "/home"

    request = await receive_authn_request(
        message, sp, MemoryRequestIdStore(), destination=idp.sso_url
    )
    assert request.id == request_id
    assert request.acs_url == ACS

    xml = build_response(idp, sp, ALICE, in_response_to=request.id)
    response = client.parse_authn_request_response(
        _b64(xml), BINDING_HTTP_POST, outstanding={request_id: "/home"}
    )
    assert response is not None
    assert response.in_response_to == request_id
    assert response.name_id.text == "alice@example.com"


def test_response_to_unknown_request_is_refused(pysaml2_sp: SpFactory, idp, sp):
    strict = pysaml2_sp(idp_metadata(idp), allow_unsolicited=False)
    xml = build_response(idp, sp, ALICE, in_response_to="_not-a-request-we-sent")
    with pytest.raises(Exception, match="Unsolicited"):
        strict.parse_authn_request_response(_b64(xml), BINDING_HTTP_POST, outstanding={})


def _tamper(xml: bytes, edit) -> str:
    root = etree.fromstring(xml)
    edit(root)
    return _b64(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _refused(client, payload: str, match: str) -> None:
    # pysaml2 raises several unrelated exception types; the message tells why.
    with pytest.raises(Exception, match=match):
        client.parse_authn_request_response(payload, BINDING_HTTP_POST)


def test_changed_name_id_is_refused(client, idp, sp):
    def edit(root):
        root.find(f".//{{{NS_SAML}}}NameID").text = "mallory@example.com"

    _refused(client, _tamper(build_response(idp, sp, ALICE), edit), "Failed to verify signature")


def test_changed_name_id_is_refused_when_only_the_assertion_is_signed(pysaml2_sp: SpFactory, idp):
    sp = ServiceProvider(entity_id=AUDIENCE, acs_url=ACS, sign_response=False)
    client = pysaml2_sp(idp_metadata(idp), want_response_signed=False)

    def edit(root):
        root.find(f".//{{{NS_SAML}}}NameID").text = "mallory@example.com"

    _refused(client, _tamper(build_response(idp, sp, ALICE), edit), "Failed to verify signature")


def test_changed_audience_is_refused(client, idp, sp):
    def edit(root):
        root.find(f".//{{{NS_SAML}}}Audience").text = "urn:auth0:alexishr:other"

    _refused(client, _tamper(build_response(idp, sp, ALICE), edit), "Failed to verify signature")


def test_response_for_another_audience_is_refused(client, idp):
    other = ServiceProvider(entity_id="urn:auth0:alexishr:other", acs_url=ACS)
    _refused(client, _b64(build_response(idp, other, ALICE)), "AudienceRestrictions")


def test_stripped_signatures_are_refused(client, idp, sp):
    def edit(root):
        for signature in root.iter(f"{{{NS_DS}}}Signature"):
            signature.getparent().remove(signature)

    _refused(client, _tamper(build_response(idp, sp, ALICE), edit), "Signature missing")


def test_expired_response_is_refused(client, idp, sp):
    issued = datetime.now(UTC) - timedelta(hours=1)
    _refused(client, _b64(build_response(idp, sp, ALICE, now=issued)), "too old")


def test_response_signed_by_another_key_is_refused(client, sp, next_idp_key):
    impostor = IdentityProvider(
        entity_id=IDP_ENTITY,
        sso_url=SSO_URL,
        slo_url=SLO_URL,
        signing_key=next_idp_key,
    )
    _refused(client, _b64(build_response(impostor, sp, ALICE)), "Failed to verify signature")


def test_status_response_reports_denial(client, idp, sp):
    xml = build_status_response(
        idp, sp, STATUS_RESPONDER, sub_status=STATUS_REQUEST_DENIED, message="not assigned"
    )
    with pytest.raises(StatusRequestDenied):
        client.parse_authn_request_response(_b64(xml), BINDING_HTTP_POST)
