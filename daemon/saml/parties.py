"""Who takes part in a SAML exchange: this IdP and one service provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from cryptography import x509

from daemon.saml.errors import SamlConfigError
from daemon.saml.keys import SigningKey
from daemon.saml.names import ATTRNAME_BASIC, NAMEID_EMAIL


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    """This IdP as one application sees it (the entity ID and URLs are per application).

    ``signing_key`` signs everything now. ``extra_certificates`` are published
    in metadata as well, so SPs learn the next key before the switch (or keep
    trusting the previous one for a while after it).
    """

    entity_id: str
    sso_url: str
    slo_url: str
    signing_key: SigningKey
    extra_certificates: tuple[x509.Certificate, ...] = ()

    @property
    def published_certificates(self) -> tuple[x509.Certificate, ...]:
        """The active certificate first, then the extra ones, without duplicates."""
        seen: list[x509.Certificate] = [self.signing_key.certificate]
        for cert in self.extra_certificates:
            if cert not in seen:
                seen.append(cert)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class ServiceProvider:
    """One service provider and what it expects from the IdP.

    ``entity_id`` is both the Issuer expected on its AuthnRequests and the
    Audience of assertions. ``acs_url`` is the only URL a Response is ever
    posted to: a request naming any other URL is refused.
    ``request_certificates`` verify signed AuthnRequests; with
    ``want_requests_signed`` an unsigned request is refused.
    """

    entity_id: str
    acs_url: str
    #: Where LogoutResponses go; ``None`` when the SP does not take part in logout.
    slo_url: str | None = None
    name_id_format: str = NAMEID_EMAIL
    attribute_name_format: str = ATTRNAME_BASIC
    sign_assertion: bool = True
    sign_response: bool = True
    want_requests_signed: bool = False
    request_certificates: tuple[x509.Certificate, ...] = field(default=())
    #: How long an assertion may be used after it is issued.
    assertion_lifetime: timedelta = timedelta(minutes=5)
    #: Allowance for the SP's clock running behind or ahead of ours.
    clock_skew: timedelta = timedelta(seconds=90)

    def __post_init__(self) -> None:
        if not (self.sign_assertion or self.sign_response):
            raise SamlConfigError(
                f"service provider {self.entity_id}: sign the assertion, the response or both; "
                "an unsigned assertion could be forged by anyone"
            )
        if self.want_requests_signed and not self.request_certificates:
            raise SamlConfigError(
                f"service provider {self.entity_id} wants signed requests "
                "but no request-signing certificate is configured"
            )
