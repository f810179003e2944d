"""The engine's Responses validate against the OASIS SAML 2.0 protocol schema."""

from __future__ import annotations

from daemon.saml.names import STATUS_REQUEST_DENIED, STATUS_RESPONDER
from daemon.saml.parties import ServiceProvider
from daemon.saml.response import Principal, build_response, build_status_response
from tests.saml.conftest import ACS, AUDIENCE
from tests.saml.schema import assert_valid

PROTOCOL = "saml-schema-protocol-2.0.xsd"
ALICE = Principal(name_id="alice@example.com", attributes={"email": ["alice@example.com"]})


def test_signed_response_is_schema_valid(idp, sp):
    assert_valid(build_response(idp, sp, ALICE, in_response_to="_abc"), PROTOCOL)


def test_response_with_only_the_assertion_signed_is_schema_valid(idp):
    sp = ServiceProvider(entity_id=AUDIENCE, acs_url=ACS, sign_response=False)
    assert_valid(build_response(idp, sp, ALICE), PROTOCOL)


def test_response_without_attributes_is_schema_valid(idp, sp):
    assert_valid(build_response(idp, sp, Principal(name_id="bob@example.com")), PROTOCOL)


def test_status_response_is_schema_valid(idp, sp):
    xml = build_status_response(
        idp, sp, STATUS_RESPONDER, sub_status=STATUS_REQUEST_DENIED, message="no access"
    )
    assert_valid(xml, PROTOCOL)


def test_schema_check_is_real(idp, sp):
    """A Signature out of place (after Status) must fail, or the checks above prove nothing."""
    import pytest
    from lxml import etree

    from daemon.saml.names import NS_DS, NS_SAMLP

    root = etree.fromstring(build_response(idp, sp, ALICE))
    signature = root.find(f"{{{NS_DS}}}Signature")
    root.find(f"{{{NS_SAMLP}}}Status").addnext(signature)
    with pytest.raises(AssertionError, match="Signature"):
        assert_valid(etree.tostring(root), PROTOCOL)
