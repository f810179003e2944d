"""Validating an AuthnRequest against the service provider it claims to come from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidInput
from signxml.verifier import SignatureConfiguration, XMLVerifier

from daemon.saml.bindings import InboundMessage, RedirectSignature
from daemon.saml.errors import SamlRequestError
from daemon.saml.names import BINDING_HTTP_POST, NS_DS, NS_SAML, NS_SAMLP
from daemon.saml.parties import ServiceProvider
from daemon.saml.replay import RequestIdStore
from daemon.saml.safexml import parse_untrusted
from daemon.saml.timefmt import parse_instant

#: How long after its IssueInstant a request may be answered (and its ID is remembered).
DEFAULT_REQUEST_LIFETIME: Final = timedelta(minutes=5)

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
# xs:ID is an NCName; bounding its length keeps the replay store small.
_ID: Final = re.compile(r"[A-Za-z_][\w.\-]{0,255}")


@dataclass(frozen=True, slots=True)
class AuthnRequest:
    """A validated AuthnRequest: what the IdP needs to answer it."""

    id: str
    issuer: str
    issue_instant: datetime
    #: Always the SP's configured ACS URL, whatever the request said.
    acs_url: str
    binding: str
    relay_state: str | None
    force_authn: bool
    is_passive: bool
    name_id_policy_format: str | None
    signed: bool


async def receive_authn_request(
    message: InboundMessage,
    sp: ServiceProvider,
    replay: RequestIdStore,
    *,
    destination: str | None = None,
    now: datetime | None = None,
    lifetime: timedelta = DEFAULT_REQUEST_LIFETIME,
) -> AuthnRequest:
    """Parse, check and claim an AuthnRequest; raise :class:`SamlRequestError` if refused.

    Checked: it is an AuthnRequest of version 2.0 with a sane ID; its Issuer
    is ``sp.entity_id``; an AssertionConsumerServiceURL, if given, is exactly
    ``sp.acs_url``; a ProtocolBinding, if given, is HTTP-POST; a Destination,
    if both it and ``destination`` are given, matches; IssueInstant is within
    ``lifetime`` plus the SP's clock skew; the signature is valid when the SP
    requires one (or sends one and has certificates); and the ID was not seen
    before (recorded in ``replay`` until the request expires).
    """
    now = now or datetime.now(UTC)
    root = parse_untrusted(message.xml)
    if root.tag != f"{{{NS_SAMLP}}}AuthnRequest":
        raise SamlRequestError("SAML message is not an AuthnRequest")

    issuer = _issuer(root)
    if issuer != sp.entity_id:
        raise SamlRequestError("AuthnRequest comes from an unknown service provider")

    signed = _check_signature(root, message, sp)
    if signed and message.redirect_signature is None:
        # Read the fields from what the signature covered, nothing else:
        # the verified tree is the answer to signature-wrapping tricks.
        root = _verified_tree(root, sp)

    if root.get("Version") != "2.0":
        raise SamlRequestError("AuthnRequest is not SAML version 2.0")
    request_id = root.get("ID") or ""
    if not _ID.fullmatch(request_id):
        raise SamlRequestError("AuthnRequest ID is missing or malformed")

    acs = root.get("AssertionConsumerServiceURL")
    if acs is not None and acs != sp.acs_url:
        raise SamlRequestError(
            "AuthnRequest names an assertion consumer URL that is not configured"
        )
    binding = root.get("ProtocolBinding")
    if binding is not None and binding != BINDING_HTTP_POST:
        raise SamlRequestError("AuthnRequest asks for a binding other than HTTP-POST")
    sent_to = root.get("Destination")
    if destination is not None and sent_to is not None and sent_to != destination:
        raise SamlRequestError("AuthnRequest was sent to another destination")

    instant = parse_instant(root.get("IssueInstant"), "AuthnRequest IssueInstant")
    if instant > now + sp.clock_skew:
        raise SamlRequestError("AuthnRequest is issued in the future; check the SP's clock")
    expires_at = instant + lifetime + sp.clock_skew
    if expires_at <= now:
        raise SamlRequestError("AuthnRequest has expired; start the sign-in again")

    if not await replay.claim(f"{sp.entity_id} {request_id}", expires_at):
        raise SamlRequestError("AuthnRequest was already used; start the sign-in again")

    policy = root.find(f"{{{NS_SAMLP}}}NameIDPolicy")
    return AuthnRequest(
        id=request_id,
        issuer=issuer,
        issue_instant=instant,
        acs_url=sp.acs_url,
        binding=message.binding,
        relay_state=message.relay_state,
        force_authn=_bool(root.get("ForceAuthn")),
        is_passive=_bool(root.get("IsPassive")),
        name_id_policy_format=policy.get("Format") if policy is not None else None,
        signed=signed,
    )


def _issuer(root: etree._Element) -> str:
    element = root.find(f"{{{NS_SAML}}}Issuer")
    if element is None or not (element.text or "").strip():
        raise SamlRequestError("SAML message has no Issuer")
    return (element.text or "").strip()


def _bool(value: str | None) -> bool:
    return value in ("true", "1")


def _check_signature(root: etree._Element, message: InboundMessage, sp: ServiceProvider) -> bool:
    """Whether the message carries a valid signature; raise if one is required or invalid."""
    embedded = root.find(f"{{{NS_DS}}}Signature") is not None
    present = message.redirect_signature is not None or embedded
    if not present:
        if sp.want_requests_signed:
            raise SamlRequestError("AuthnRequest must be signed")
        return False
    if not sp.request_certificates:
        # Nothing to check it with and not required: treat as unsigned.
        return False
    if message.redirect_signature is not None:
        _verify_redirect(message.redirect_signature, sp)
    else:
        _verified_tree(root, sp)
    return True


def _verify_redirect(signature: RedirectSignature, sp: ServiceProvider) -> None:
    algorithm = _REDIRECT_SIG_ALGS.get(signature.sig_alg)
    if algorithm is None:
        raise SamlRequestError("AuthnRequest is signed with an unsupported algorithm")
    for cert in sp.request_certificates:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(signature.signature, signature.signed_octets, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            continue
        return
    raise SamlRequestError("AuthnRequest signature is not valid")


def _verified_tree(root: etree._Element, sp: ServiceProvider) -> etree._Element:
    request_id = root.get("ID")
    for cert in sp.request_certificates:
        try:
            result = XMLVerifier().verify(root, x509_cert=cert, expect_config=_XML_SIGNATURE_CONFIG)
        except (InvalidInput, ValueError):
            # signxml's InvalidSignature and InvalidCertificate subclass InvalidInput.
            continue
        signed = result.signed_xml if not isinstance(result, list) else None
        if signed is None or signed.get("ID") != request_id or signed.tag != root.tag:
            raise SamlRequestError("AuthnRequest signature does not cover the request")
        return signed
    raise SamlRequestError("AuthnRequest signature is not valid")
