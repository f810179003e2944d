"""Enveloped XML signatures on SAML elements, placed where the schema wants them."""

from __future__ import annotations

import secrets
import threading

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


#: Serialized ``ds:KeyInfo`` per certificate, by ``id``; the certificate is
#: kept beside it so a recycled id can never match another certificate.
_KEY_INFO: dict[int, tuple[x509.Certificate, bytes]] = {}
_KEY_INFO_LOCK = threading.Lock()


def _key_info(cert: x509.Certificate) -> etree._Element:
    """A fresh ``ds:KeyInfo`` carrying ``cert``, built from a cached serialization.

    signxml would otherwise PEM-encode the certificate and strip the armour
    again for every signature; the parse of a cached copy is cheaper, and
    each signature needs its own element.
    """
    hit = _KEY_INFO.get(id(cert))
    if hit is None or hit[0] is not cert:
        ds = f"{{{NS_DS}}}"
        key_info = etree.Element(f"{ds}KeyInfo", nsmap={"ds": NS_DS})
        data = etree.SubElement(key_info, f"{ds}X509Data")
        etree.SubElement(data, f"{ds}X509Certificate").text = certificate_base64(cert)
        hit = (cert, etree.tostring(key_info))
        with _KEY_INFO_LOCK:
            if len(_KEY_INFO) >= 16:  # keys change a few times a year; stay bounded anyway
                _KEY_INFO.clear()
            _KEY_INFO[id(cert)] = hit
    return etree.fromstring(hit[1])


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
