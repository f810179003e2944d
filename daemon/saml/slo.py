"""Single logout: read an SP's LogoutRequest, answer with a signed LogoutResponse.

Ending the IdP session itself is the caller's job; this module only speaks
the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from daemon.saml.bindings import InboundMessage
from daemon.saml.errors import SamlConfigError, SamlRequestError
from daemon.saml.names import NS_SAML, NS_SAMLP, STATUS_SUCCESS
from daemon.saml.parties import IdentityProvider, ServiceProvider
from daemon.saml.replay import RequestIdStore
from daemon.saml.request import DEFAULT_REQUEST_LIFETIME, open_request
from daemon.saml.response import finish, status_response

_MAX_SESSION_INDEXES: Final = 32


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """A validated LogoutRequest."""

    id: str
    issuer: str
    name_id: str
    name_id_format: str | None
    session_indexes: tuple[str, ...]
    relay_state: str | None
    signed: bool


async def receive_logout_request(
    message: InboundMessage,
    sp: ServiceProvider,
    replay: RequestIdStore,
    *,
    destination: str | None = None,
    now: datetime | None = None,
    lifetime: timedelta = DEFAULT_REQUEST_LIFETIME,
) -> LogoutRequest:
    """Parse and check a LogoutRequest like an AuthnRequest (issuer, time, signature, replay).

    Raises :class:`SamlRequestError` when refused.
    """
    checked = open_request(
        message, sp, "LogoutRequest", destination=destination, now=now, lifetime=lifetime
    )
    root, request_id, expires_at = checked.root, checked.request_id, checked.expires_at
    name_id = root.find(f"{{{NS_SAML}}}NameID")
    if name_id is None or not (name_id.text or "").strip():
        raise SamlRequestError("LogoutRequest has no NameID")
    indexes = tuple((e.text or "").strip() for e in root.findall(f"{{{NS_SAMLP}}}SessionIndex"))
    if len(indexes) > _MAX_SESSION_INDEXES:
        raise SamlRequestError("LogoutRequest names too many sessions")
    if not await replay.claim(f"{sp.entity_id} {request_id}", expires_at):
        raise SamlRequestError("LogoutRequest was already used")
    return LogoutRequest(
        id=request_id,
        issuer=checked.issuer,
        name_id=(name_id.text or "").strip(),
        name_id_format=name_id.get("Format"),
        session_indexes=indexes,
        relay_state=message.relay_state,
        signed=checked.signed,
    )


def build_logout_response(
    idp: IdentityProvider,
    sp: ServiceProvider,
    in_response_to: str,
    *,
    status: str = STATUS_SUCCESS,
    now: datetime | None = None,
) -> bytes:
    """A signed LogoutResponse to ``sp.slo_url``, serialized."""
    if sp.slo_url is None:
        raise SamlConfigError(f"service provider {sp.entity_id} has no logout URL configured")
    now = now or datetime.now(UTC)
    response = status_response(
        "LogoutResponse", idp, sp.slo_url, status, in_response_to=in_response_to, now=now
    )
    return finish(response, idp, True)
