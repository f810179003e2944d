"""What the Response says, element by element."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from lxml import etree

from daemon.saml.names import (
    ATTRNAME_UNSPECIFIED,
    AUTHN_PASSWORD_PROTECTED_TRANSPORT,
    NAMEID_PERSISTENT,
    NS_DS,
    NS_SAML,
    NS_SAMLP,
)
from daemon.saml.parties import ServiceProvider
from daemon.saml.response import Principal, build_response
from tests.saml.conftest import ACS, AUDIENCE

S = f"{{{NS_SAML}}}"
NOW = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
ALICE = Principal(
    name_id="alice@example.com",
    attributes={"email": ["alice@example.com"], "groups": ["a", "b"]},
    session_index="_sess1",
)


def test_response_contents(idp, sp):
    root = etree.fromstring(build_response(idp, sp, ALICE, in_response_to="_req9", now=NOW))
    assert root.tag == f"{{{NS_SAMLP}}}Response"
    assert re.fullmatch(r"_[0-9a-f]{40}", root.get("ID"))
    assert root.get("Destination") == ACS
    assert root.get("InResponseTo") == "_req9"
    assert root.get("IssueInstant") == "2031-05-06T07:08:09Z"
    # The schema's order: Issuer, then Signature, then Status.
    assert [child.tag for child in root][:3] == [
        f"{S}Issuer",
        f"{{{NS_DS}}}Signature",
        f"{{{NS_SAMLP}}}Status",
    ]
    assertion = root.find(f"{S}Assertion")
    assert [child.tag for child in assertion][:2] == [f"{S}Issuer", f"{{{NS_DS}}}Signature"]
    assert assertion.get("ID") != root.get("ID")

    data = assertion.find(f".//{S}SubjectConfirmationData")
    assert data.get("Recipient") == ACS
    assert data.get("InResponseTo") == "_req9"
    assert data.get("NotOnOrAfter") == "2031-05-06T07:13:09Z"

    conditions = assertion.find(f"{S}Conditions")
    assert conditions.get("NotBefore") == "2031-05-06T07:06:39Z"  # 90 s skew
    assert conditions.get("NotOnOrAfter") == "2031-05-06T07:13:09Z"
    assert conditions.find(f".//{S}Audience").text == AUDIENCE

    authn = assertion.find(f"{S}AuthnStatement")
    assert authn.get("SessionIndex") == "_sess1"
    assert authn.find(f".//{S}AuthnContextClassRef").text == AUTHN_PASSWORD_PROTECTED_TRANSPORT

    attributes = {
        a.get("Name"): [v.text for v in a.findall(f"{S}AttributeValue")]
        for a in assertion.iter(f"{S}Attribute")
    }
    assert attributes == {"email": ["alice@example.com"], "groups": ["a", "b"]}


def test_idp_initiated_has_no_in_response_to(idp, sp):
    root = etree.fromstring(build_response(idp, sp, ALICE))
    assert root.get("InResponseTo") is None
    assert root.find(f".//{S}SubjectConfirmationData").get("InResponseTo") is None


def test_formats_and_lifetime_are_configurable(idp):
    sp = ServiceProvider(
        entity_id=AUDIENCE,
        acs_url=ACS,
        name_id_format=NAMEID_PERSISTENT,
        attribute_name_format=ATTRNAME_UNSPECIFIED,
        assertion_lifetime=timedelta(minutes=2),
        clock_skew=timedelta(seconds=10),
    )
    root = etree.fromstring(build_response(idp, sp, ALICE, now=NOW))
    assert root.find(f".//{S}NameID").get("Format") == NAMEID_PERSISTENT
    assert {a.get("NameFormat") for a in root.iter(f"{S}Attribute")} == {ATTRNAME_UNSPECIFIED}
    conditions = root.find(f".//{S}Conditions")
    assert conditions.get("NotBefore") == "2031-05-06T07:07:59Z"
    assert conditions.get("NotOnOrAfter") == "2031-05-06T07:10:09Z"


def test_ids_are_unique(idp, sp):
    ids = set()
    for _ in range(5):
        root = etree.fromstring(build_response(idp, sp, ALICE))
        ids.add(root.get("ID"))
        ids.add(root.find(f"{S}Assertion").get("ID"))
    assert len(ids) == 10


def test_both_signatures_off_is_a_config_error():
    import pytest

    from daemon.saml.errors import SamlConfigError

    with pytest.raises(SamlConfigError, match="unsigned assertion"):
        ServiceProvider(entity_id=AUDIENCE, acs_url=ACS, sign_assertion=False, sign_response=False)


def test_each_signature_references_its_own_element_with_the_agreed_algorithms(idp, sp):
    """RSA-SHA256, SHA-256 digest, exclusive c14n, enveloped, by the parent's ID.

    The signer is left to derive the Reference URI from the element's ID; a
    signature that pointed anywhere else would let a wrapped copy pass.
    """
    root = etree.fromstring(build_response(idp, sp, ALICE))
    ds = f"{{{NS_DS}}}"
    signatures = root.findall(f".//{ds}Signature")
    assert len(signatures) == 2
    for signature in signatures:
        parent = signature.getparent()
        info = signature.find(f"{ds}SignedInfo")
        references = info.findall(f"{ds}Reference")
        assert [r.get("URI") for r in references] == [f"#{parent.get('ID')}"]
        transforms = [t.get("Algorithm") for t in references[0].iter(f"{ds}Transform")]
        assert transforms == [
            "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
            "http://www.w3.org/2001/10/xml-exc-c14n#",
        ]
        assert references[0].find(f"{ds}DigestMethod").get("Algorithm") == (
            "http://www.w3.org/2001/04/xmlenc#sha256"
        )
        assert info.find(f"{ds}SignatureMethod").get("Algorithm") == (
            "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
        )
        assert info.find(f"{ds}CanonicalizationMethod").get("Algorithm") == (
            "http://www.w3.org/2001/10/xml-exc-c14n#"
        )


def test_key_info_carries_the_certificate_of_the_key_that_signed(idp, sp):
    """KeyInfo is built from a cache per certificate: a second key must not get the first's."""
    import dataclasses

    from daemon.saml.keys import generate_signing_key

    ds = f"{{{NS_DS}}}"
    other = dataclasses.replace(idp, signing_key=generate_signing_key("next IdP key"))
    for party in (idp, other, idp):
        root = etree.fromstring(build_response(party, sp, ALICE))
        certs = [c.text for c in root.iter(f"{ds}X509Certificate")]
        assert certs == [party.signing_key.certificate_base64] * 2
