"""IdP metadata: schema-valid, and it carries key rotation."""

from __future__ import annotations

import base64

from lxml import etree
from saml2 import BINDING_HTTP_POST

from daemon.saml.metadata import idp_metadata
from daemon.saml.names import (
    BINDING_HTTP_POST as POST,
)
from daemon.saml.names import (
    BINDING_HTTP_REDIRECT,
    NAMEID_EMAIL,
    NS_DS,
    NS_MD,
    NS_SAMLP,
)
from daemon.saml.parties import IdentityProvider
from daemon.saml.response import Principal, build_response
from tests.saml.conftest import SpFactory
from tests.saml.schema import assert_valid

MD = f"{{{NS_MD}}}"


def test_metadata_is_schema_valid(idp):
    assert_valid(idp_metadata(idp, want_authn_requests_signed=True), "saml-schema-metadata-2.0.xsd")


def test_metadata_contents(idp):
    root = etree.fromstring(idp_metadata(idp, want_authn_requests_signed=True))
    assert root.get("entityID") == idp.entity_id
    descriptor = root.find(f"{MD}IDPSSODescriptor")
    assert descriptor.get("WantAuthnRequestsSigned") == "true"
    assert descriptor.get("protocolSupportEnumeration") == NS_SAMLP
    sso = {e.get("Binding"): e.get("Location") for e in descriptor.iter(f"{MD}SingleSignOnService")}
    assert sso == {BINDING_HTTP_REDIRECT: idp.sso_url, POST: idp.sso_url}
    slo = {e.get("Location") for e in descriptor.iter(f"{MD}SingleLogoutService")}
    assert slo == {idp.slo_url}
    assert [e.text for e in descriptor.iter(f"{MD}NameIDFormat")] == [NAMEID_EMAIL]
    keys = descriptor.findall(f"{MD}KeyDescriptor")
    assert [k.get("use") for k in keys] == ["signing"]
    cert = keys[0].find(f".//{{{NS_DS}}}X509Certificate").text
    assert cert == idp.signing_key.certificate_base64
    assert base64.b64decode(cert)  # one line of DER, no PEM armour


def test_metadata_publishes_current_and_next_certificate(idp_key, next_idp_key):
    idp = IdentityProvider(
        entity_id="https://idp.example.test/x",
        sso_url="https://idp.example.test/x/sso",
        slo_url="https://idp.example.test/x/slo",
        signing_key=idp_key,
        extra_certificates=(next_idp_key.certificate, idp_key.certificate),
    )
    xml = idp_metadata(idp)
    assert_valid(xml, "saml-schema-metadata-2.0.xsd")
    certs = [e.text for e in etree.fromstring(xml).iter(f"{{{NS_DS}}}X509Certificate")]
    assert certs == [idp_key.certificate_base64, next_idp_key.certificate_base64]


def test_sp_follows_rotation_to_the_published_next_key(
    pysaml2_sp: SpFactory, idp, sp, next_idp_key
):
    before = IdentityProvider(
        entity_id=idp.entity_id,
        sso_url=idp.sso_url,
        slo_url=idp.slo_url,
        signing_key=idp.signing_key,
        extra_certificates=(next_idp_key.certificate,),
    )
    client = pysaml2_sp(idp_metadata(before))  # the SP loads metadata once, before the switch
    after = IdentityProvider(
        entity_id=idp.entity_id,
        sso_url=idp.sso_url,
        slo_url=idp.slo_url,
        signing_key=next_idp_key,
        extra_certificates=(idp.signing_key.certificate,),
    )
    principal = Principal(name_id="alice@example.com", attributes={"email": ["alice@example.com"]})
    for signer in (before, after):
        xml = build_response(signer, sp, principal)
        encoded = base64.b64encode(xml).decode()
        assert client.parse_authn_request_response(encoded, BINDING_HTTP_POST) is not None
