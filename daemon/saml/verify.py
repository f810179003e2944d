"""Checking the signature on an inbound SAML message against an SP's certificates.

Both SAML ways of signing are handled: an enveloped XML signature
(HTTP-POST) and the detached query-string signature of HTTP-Redirect
(bindings spec §3.4.4.1). SHA-1 is refused in both.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from daemon.saml.bindings import InboundMessage, RedirectSignature
from daemon.saml.errors import SamlRequestError
from daemon.saml.names import NS_DS, NS_SAML
from daemon.saml.parties import ServiceProvider

# Redirect SigAlg URIs accepted, with the hash each implies. SHA-1 is refused.
_REDIRECT_SIG_ALGS: Final[dict[str, hashes.HashAlgorithm]] = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": hashes.SHA256(),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": hashes.SHA384(),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": hashes.SHA512(),
}
_XML_SIGNATURE_CONFIG: Final = SignatureConfiguration(
    location="./",
    expect_references=1,
    signature_methods=frozenset(
        {SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA384, SignatureMethod.RSA_SHA512}
    ),
    digest_algorithms=frozenset(
        {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512}
    ),
)


def issuer_of(root: etree._Element) -> str:
    """The message's ``saml:Issuer`` text; raise if it is missing or empty."""
    element = root.find(f"{{{NS_SAML}}}Issuer")
    if element is None or not (element.text or "").strip():
        raise SamlRequestError("SAML message has no Issuer")
    return (element.text or "").strip()


def check_signature(
    root: etree._Element, message: InboundMessage, sp: ServiceProvider, what: str
) -> tuple[bool, etree._Element]:
    """Check the signature ``sp``'s policy asks for; return (signed, tree to read).

    Unsigned is fine unless ``sp.want_requests_signed``. A signature that is
    present is verified whenever the SP has certificates, and a bad one is
    refused even when signing is optional. For an XML signature the returned
    tree is the one the signature covered: reading fields from anything else
    would open the door to signature-wrapping attacks. ``what`` names the
    message in errors.
    """
    embedded = root.find(f"{{{NS_DS}}}Signature") is not None
    present = message.redirect_signature is not None or embedded
    if not present:
        if sp.want_requests_signed:
            raise SamlRequestError(f"{what} must be signed")
        return False, root
    if not sp.request_certificates:
        # Nothing to check it with and not required: treat as unsigned.
        return False, root
    if message.redirect_signature is not None:
        _verify_redirect(message.redirect_signature, sp, what)
        return True, root
    return True, _verified_tree(root, sp, what)


def _verify_redirect(signature: RedirectSignature, sp: ServiceProvider, what: str) -> None:
    algorithm = _REDIRECT_SIG_ALGS.get(signature.sig_alg)
    if algorithm is None:
        raise SamlRequestError(f"{what} is signed with an unsupported algorithm")
    for cert in sp.request_certificates:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(signature.signature, signature.signed_octets, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            continue
        return
    raise SamlRequestError(f"{what} signature is not valid")


def _verified_tree(root: etree._Element, sp: ServiceProvider, what: str) -> etree._Element:
    message_id = root.get("ID")
    for cert in sp.request_certificates:
        try:
            result = XMLVerifier().verify(root, x509_cert=cert, expect_config=_XML_SIGNATURE_CONFIG)
        except (SignXMLException, InvalidSignature, ValueError):
            # Bad digest, bad signature, wrong or expired certificate, malformed
            # Signature: all the same to the sender, and the next cert may fit.
            continue
        signed = result.signed_xml if not isinstance(result, list) else None
        if signed is None or signed.get("ID") != message_id or signed.tag != root.tag:
            raise SamlRequestError(f"{what} signature does not cover the message")
        return signed
    raise SamlRequestError(f"{what} signature is not valid")
