"""Enveloped XML signatures on SAML elements, placed where the schema wants them."""

from __future__ import annotations

import secrets

from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from daemon.saml.keys import SigningKey
from daemon.saml.names import NS_DS, NS_SAML


def new_id() -> str:
    """A fresh SAML ID: ``_`` and 160 random bits in hex (an xs:ID must not start with a digit)."""
    return "_" + secrets.token_hex(20)


def add_signature_placeholder(element: etree._Element) -> None:
    """Mark where the signature goes: right after ``saml:Issuer``, as SAML's schema orders it."""
    issuer = element.find(f"{{{NS_SAML}}}Issuer")
    if issuer is None:
        raise ValueError("a signed SAML element needs an Issuer first")
    placeholder = etree.Element(f"{{{NS_DS}}}Signature", Id="placeholder", nsmap={"ds": NS_DS})
    issuer.addnext(placeholder)


def sign(element: etree._Element, key: SigningKey) -> etree._Element:
    """Sign ``element`` (with a placeholder from :func:`add_signature_placeholder`).

    RSA-SHA256, SHA-256 digest, exclusive c14n, enveloped, referencing the
    element's ``ID``, with the certificate in KeyInfo. Returns a new element:
    signxml works on a re-parsed copy.

    No ``reference_uri`` is passed: signxml then references the element's own
    ``ID`` without serialising and re-parsing the document a third time to
    look it up, which made signing about a tenth slower.
    """
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    signer.namespaces = {"ds": NS_DS}
    signed: etree._Element = signer.sign(
        element,
        key=key.private_key,
        cert=[key.certificate],
    )
    return signed
