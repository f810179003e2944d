"""Enveloped XML signatures on SAML elements, placed where the schema wants them."""

from __future__ import annotations

import functools
import secrets

from cryptography import x509
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from daemon.saml.keys import SigningKey, certificate_base64
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


@functools.lru_cache(maxsize=8)
def _key_info_xml(cert: x509.Certificate) -> bytes:
    """``ds:KeyInfo`` carrying ``cert``, serialized (certificates hash and compare by DER)."""
    ds = f"{{{NS_DS}}}"
    key_info = etree.Element(f"{ds}KeyInfo", nsmap={"ds": NS_DS})
    data = etree.SubElement(key_info, f"{ds}X509Data")
    etree.SubElement(data, f"{ds}X509Certificate").text = certificate_base64(cert)
    return etree.tostring(key_info)


def _key_info(cert: x509.Certificate) -> etree._Element:
    """A fresh ``ds:KeyInfo`` carrying ``cert`` (each signature needs its own element).

    signxml would otherwise PEM-encode the certificate and strip the armour
    again for every signature; parsing a cached serialization is cheaper.
    """
    return etree.fromstring(_key_info_xml(cert))


def sign(element: etree._Element, key: SigningKey) -> etree._Element:
    """Sign ``element`` (with a placeholder from :func:`add_signature_placeholder`).

    RSA-SHA256, SHA-256 digest, exclusive c14n, enveloped, referencing the
    element's ``ID``, with the certificate in KeyInfo (X509Data). Returns a new element:
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
        key_info=_key_info(key.certificate),
    )
    return signed
