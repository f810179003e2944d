"""Validating an AuthnRequest against the service provider it claims to come from."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from lxml import etree

from daemon.saml.bindings import InboundMessage
from daemon.saml.errors import SamlRequestError
from daemon.saml.names import BINDING_HTTP_POST, NS_SAMLP
from daemon.saml.parties import ServiceProvider
from daemon.saml.replay import RequestIdStore
from daemon.saml.safexml import parse_untrusted
from daemon.saml.timefmt import parse_instant
from daemon.saml.verify import check_signature, issuer_of

#: How long after its IssueInstant a request may be answered (and its ID is remembered).
DEFAULT_REQUEST_LIFETIME: Final = timedelta(minutes=5)

#: An xs:ID (an NCName); bounding its length keeps the replay store small.
MESSAGE_ID: Final = re.compile(r"[A-Za-z_][\w.\-]{0,255}")


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

    def to_json(self) -> str:
        """This request as JSON text, to park it in the state store while the user signs in."""
        fields = asdict(self)
        fields["issue_instant"] = self.issue_instant.isoformat()
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AuthnRequest:
        """The request :meth:`to_json` wrote; ``ValueError``, ``KeyError`` or ``TypeError``
        for text it did not write."""
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise TypeError("a parked AuthnRequest is a JSON object")
        instant = datetime.fromisoformat(fields.pop("issue_instant"))
        if instant.tzinfo is None:
            raise ValueError("a parked AuthnRequest's IssueInstant has a time zone")
        request = cls(issue_instant=instant, **fields)
        for name in ("id", "issuer", "acs_url", "binding"):
            if not isinstance(getattr(request, name), str):
                raise TypeError(f"a parked AuthnRequest's {name} is text")
        return request


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
    checked = open_request(
        message, sp, "AuthnRequest", destination=destination, now=now, lifetime=lifetime
    )
    root, request_id = checked.root, checked.request_id
    acs = root.get("AssertionConsumerServiceURL")
    if acs is not None and acs != sp.acs_url:
        raise SamlRequestError(
            "AuthnRequest names an assertion consumer URL that is not configured"
        )
    binding = root.get("ProtocolBinding")
    if binding is not None and binding != BINDING_HTTP_POST:
        raise SamlRequestError("AuthnRequest asks for a binding other than HTTP-POST")
    issuer, signed, instant, expires_at = (
        checked.issuer,
        checked.signed,
        checked.instant,
        checked.expires_at,
    )

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


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """What every inbound request passed: its tree, issuer, ID, signature and times."""

    root: etree._Element
    issuer: str
    request_id: str
    signed: bool
    instant: datetime
    expires_at: datetime


def open_request(
    message: InboundMessage,
    sp: ServiceProvider,
    kind: str,
    *,
    destination: str | None,
    now: datetime | None,
    lifetime: timedelta,
) -> CheckedRequest:
    """The checks every request from an SP gets, whatever its kind.

    It must be a ``kind`` element of SAML 2.0 with a sane ID, issued by
    ``sp.entity_id``, signed when the SP's policy says so, sent to
    ``destination`` when both name one, and issued within ``lifetime`` (plus
    the SP's clock skew). The caller checks what is particular to its kind,
    then claims the ID against replay.
    """
    now = now or datetime.now(UTC)
    root = parse_untrusted(message.xml)
    if root.tag != f"{{{NS_SAMLP}}}{kind}":
        article = "an" if kind[0] in "AEIOU" else "a"
        raise SamlRequestError(f"SAML message is not {article} {kind}")
    issuer = issuer_of(root)
    if issuer != sp.entity_id:
        raise SamlRequestError(f"{kind} comes from an unknown service provider")
    signed, root = check_signature(root, message, sp, kind)
    if root.get("Version") != "2.0":
        raise SamlRequestError(f"{kind} is not SAML version 2.0")
    request_id = root.get("ID") or ""
    if not MESSAGE_ID.fullmatch(request_id):
        raise SamlRequestError(f"{kind} ID is missing or malformed")
    sent_to = root.get("Destination")
    if destination is not None and sent_to is not None and sent_to != destination:
        raise SamlRequestError(f"{kind} was sent to another destination")
    instant = parse_instant(root.get("IssueInstant"), f"{kind} IssueInstant")
    if instant > now + sp.clock_skew:
        raise SamlRequestError(f"{kind} is issued in the future; check the SP's clock")
    expires_at = instant + lifetime + sp.clock_skew
    if expires_at <= now:
        raise SamlRequestError(f"{kind} has expired; start again")
    return CheckedRequest(root, issuer, request_id, signed, instant, expires_at)


def _bool(value: str | None) -> bool:
    return value in ("true", "1")
