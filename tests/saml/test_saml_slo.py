"""Single logout with pysaml2 as the SP."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

import pytest
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NameID

from daemon.saml.bindings import decode_redirect
from daemon.saml.errors import SamlConfigError, SamlRequestError
from daemon.saml.metadata import idp_metadata
from daemon.saml.parties import ServiceProvider
from daemon.saml.replay import MemoryRequestIdStore
from daemon.saml.slo import build_logout_response, receive_logout_request
from tests.saml.conftest import ACS, AUDIENCE
from tests.saml.schema import assert_valid

SP_SLO = "https://auth.alexishr.com/logout/callback"


@pytest.fixture
def slo_sp() -> ServiceProvider:
    return ServiceProvider(entity_id=AUDIENCE, acs_url=ACS, slo_url=SP_SLO)


@pytest.fixture
def slo_client(pysaml2_sp, idp):
    return pysaml2_sp(
        idp_metadata(idp),
        endpoints={
            "assertion_consumer_service": [(ACS, BINDING_HTTP_POST)],
            "single_logout_service": [(SP_SLO, BINDING_HTTP_REDIRECT)],
        },
    )


def _logout_query(client, idp) -> tuple[str, str]:
    name_id = NameID(format=NAMEID_FORMAT_EMAILADDRESS, text="alice@example.com")
    request_id, request = client.create_logout_request(
        idp.slo_url, idp.entity_id, name_id=name_id, session_indexes=["_s1"]
    )
    info = client.apply_binding(BINDING_HTTP_REDIRECT, str(request), idp.slo_url, "rs")
    return request_id, urlsplit(dict(info["headers"])["Location"]).query


async def test_logout_round_trip(slo_client, idp, slo_sp):
    request_id, query = _logout_query(slo_client, idp)
    request = await receive_logout_request(
        decode_redirect(query), slo_sp, MemoryRequestIdStore(), destination=idp.slo_url
    )
    assert request.id == request_id
    assert request.name_id == "alice@example.com"
    assert request.session_indexes == ("_s1",)
    assert request.relay_state == "rs"

    xml = build_logout_response(idp, slo_sp, request.id)
    assert_valid(xml, "saml-schema-protocol-2.0.xsd")
    slo_client.state[request_id] = {  # what pysaml2 keeps for its own outstanding logouts
        "entity_id": idp.entity_id,
        "operation": "SLO",
        "entity_ids": [idp.entity_id],
        "reason": "",
        "not_on_or_after": 0,
        "sign": False,
    }
    response = slo_client.parse_logout_request_response(
        base64.b64encode(xml).decode(), BINDING_HTTP_POST
    )
    assert response is not None
    assert response.in_response_to == request_id


async def test_replayed_logout_request_is_refused(slo_client, idp, slo_sp):
    _, query = _logout_query(slo_client, idp)
    store = MemoryRequestIdStore()
    await receive_logout_request(decode_redirect(query), slo_sp, store)
    with pytest.raises(SamlRequestError, match="already used"):
        await receive_logout_request(decode_redirect(query), slo_sp, store)


async def test_logout_from_unknown_sp_is_refused(slo_client, idp):
    _, query = _logout_query(slo_client, idp)
    other = ServiceProvider(entity_id="urn:other", acs_url=ACS, slo_url=SP_SLO)
    with pytest.raises(SamlRequestError, match="unknown service provider"):
        await receive_logout_request(decode_redirect(query), other, MemoryRequestIdStore())


def test_logout_response_needs_an_sp_logout_url(idp, sp):
    with pytest.raises(SamlConfigError, match="no logout URL"):
        build_logout_response(idp, sp, "_r")
