"""Building the signed Response that signs a user in to a service provider."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from daemon.saml.names import (
    AUTHN_PASSWORD_PROTECTED_TRANSPORT,
    AUTHN_REFEDS_MFA,
    CONFIRMATION_BEARER,
    ENTITY_FORMAT,
    NS_SAML,
    NS_SAMLP,
    NS_XS,
    NS_XSI,
    STATUS_SUCCESS,
)
from daemon.saml.parties import IdentityProvider, ServiceProvider
from daemon.saml.signing import add_signature_placeholder, new_id, sign
from daemon.saml.timefmt import format_instant

_SAML = f"{{{NS_SAML}}}"
_SAMLP = f"{{{NS_SAMLP}}}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is being signed in, as the SP will see them."""

    #: The NameID value (for an email format: the user's work email).
    name_id: str
    #: Attribute name → values, in the order given. An empty list sends no values.
    attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: The IdP session this sign-in belongs to (SessionIndex; used by logout).
    session_index: str = field(default_factory=new_id)
    #: When the user authenticated; defaults to the response's issue time.
    authn_instant: datetime | None = None
    #: Whether the user passed a second factor: the AuthnContextClassRef is
    #: then the REFEDS MFA profile, else PasswordProtectedTransport.
    multi_factor: bool = False

    @property
    def authn_context(self) -> str:
        """The ``AuthnContextClassRef`` of the assertion."""
        return AUTHN_REFEDS_MFA if self.multi_factor else AUTHN_PASSWORD_PROTECTED_TRANSPORT


def build_response(
    idp: IdentityProvider,
    sp: ServiceProvider,
    principal: Principal,
    *,
    in_response_to: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """A successful Response for ``principal``, serialized, signed as ``sp`` asks.

    ``in_response_to`` is the AuthnRequest ID for SP-initiated sign-in, and
    ``None`` for IdP-initiated (unsolicited) sign-in.
    """
    now = now or datetime.now(UTC)
    assertion = _assertion(idp, sp, principal, in_response_to, now)
    if sp.sign_assertion:
        add_signature_placeholder(assertion)
        assertion = sign(assertion, idp.signing_key)
    response = status_response(
        "Response", idp, sp.acs_url, STATUS_SUCCESS, in_response_to=in_response_to, now=now
    )
    response.append(assertion)
    return finish(response, idp, sp.sign_response)


def build_status_response(
    idp: IdentityProvider,
    sp: ServiceProvider,
    status: str,
    *,
    sub_status: str | None = None,
    message: str | None = None,
    in_response_to: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """A Response without an assertion that tells the SP why sign-in failed.

    ``status`` is a top-level code (Requester or Responder), ``sub_status``
    a second-level one such as RequestDenied. ``message`` is shown to the
    SP; keep it free of internal detail. Always signed.
    """
    now = now or datetime.now(UTC)
    response = status_response(
        "Response",
        idp,
        sp.acs_url,
        status,
        sub_status=sub_status,
        message=message,
        in_response_to=in_response_to,
        now=now,
    )
    return finish(response, idp, True)


def finish(response: etree._Element, idp: IdentityProvider, signed: bool) -> bytes:
    """``response`` serialized with an XML declaration, signed first when ``signed``."""
    if signed:
        add_signature_placeholder(response)
        response = sign(response, idp.signing_key)
    return etree.tostring(response, xml_declaration=True, encoding="UTF-8")


def status_response(
    tag: str,
    idp: IdentityProvider,
    destination: str,
    status: str,
    *,
    sub_status: str | None = None,
    message: str | None = None,
    in_response_to: str | None = None,
    now: datetime,
) -> etree._Element:
    """A ``samlp:<tag>`` (Response, LogoutResponse) with its Issuer and Status, unsigned.

    The StatusResponseType every SAML response shares: ID, version, issue
    time and ``destination``, then the Issuer and the status code(s).
    """
    response = etree.Element(
        f"{_SAMLP}{tag}",
        nsmap={"samlp": NS_SAMLP, "saml": NS_SAML},
        ID=new_id(),
        Version="2.0",
        IssueInstant=format_instant(now),
        Destination=destination,
    )
    if in_response_to is not None:
        response.set("InResponseTo", in_response_to)
    _issuer(response, idp)
    status_el = etree.SubElement(response, f"{_SAMLP}Status")
    code = etree.SubElement(status_el, f"{_SAMLP}StatusCode", Value=status)
    if sub_status is not None:
        etree.SubElement(code, f"{_SAMLP}StatusCode", Value=sub_status)
    if message is not None:
        etree.SubElement(status_el, f"{_SAMLP}StatusMessage").text = message
    return response


def _issuer(parent: etree._Element, idp: IdentityProvider) -> None:
    etree.SubElement(parent, f"{_SAML}Issuer", Format=ENTITY_FORMAT).text = idp.entity_id


def _assertion(
    idp: IdentityProvider,
    sp: ServiceProvider,
    principal: Principal,
    in_response_to: str | None,
    now: datetime,
) -> etree._Element:
    not_on_or_after = format_instant(now + sp.assertion_lifetime)
    assertion = etree.Element(
        f"{_SAML}Assertion",
        nsmap={"saml": NS_SAML, "xs": NS_XS, "xsi": NS_XSI},
        ID=new_id(),
        Version="2.0",
        IssueInstant=format_instant(now),
    )
    _issuer(assertion, idp)

    subject = etree.SubElement(assertion, f"{_SAML}Subject")
    name_id = etree.SubElement(subject, f"{_SAML}NameID", Format=sp.name_id_format)
    name_id.text = principal.name_id
    confirmation = etree.SubElement(
        subject, f"{_SAML}SubjectConfirmation", Method=CONFIRMATION_BEARER
    )
    data = etree.SubElement(
        confirmation,
        f"{_SAML}SubjectConfirmationData",
        NotOnOrAfter=not_on_or_after,
        Recipient=sp.acs_url,
    )
    if in_response_to is not None:
        data.set("InResponseTo", in_response_to)

    conditions = etree.SubElement(
        assertion,
        f"{_SAML}Conditions",
        NotBefore=format_instant(now - sp.clock_skew),
        NotOnOrAfter=not_on_or_after,
    )
    restriction = etree.SubElement(conditions, f"{_SAML}AudienceRestriction")
    etree.SubElement(restriction, f"{_SAML}Audience").text = sp.entity_id

    authn = etree.SubElement(
        assertion,
        f"{_SAML}AuthnStatement",
        AuthnInstant=format_instant(principal.authn_instant or now),
        SessionIndex=principal.session_index,
    )
    context = etree.SubElement(authn, f"{_SAML}AuthnContext")
    etree.SubElement(context, f"{_SAML}AuthnContextClassRef").text = principal.authn_context

    if principal.attributes:
        statement = etree.SubElement(assertion, f"{_SAML}AttributeStatement")
        for name, values in principal.attributes.items():
            attribute = etree.SubElement(
                statement, f"{_SAML}Attribute", Name=name, NameFormat=sp.attribute_name_format
            )
            for value in values:
                element = etree.SubElement(attribute, f"{_SAML}AttributeValue")
                element.set(f"{{{NS_XSI}}}type", "xs:string")
                element.text = value
    return assertion
