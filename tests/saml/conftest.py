"""Shared fixtures: an IdP built with the engine, and pysaml2 as the real SP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from saml2 import BINDING_HTTP_POST
from saml2.client import Saml2Client
from saml2.config import SPConfig

from daemon.saml.keys import SigningKey, generate_signing_key, write_signing_key
from daemon.saml.metadata import idp_metadata
from daemon.saml.names import NAMEID_EMAIL
from daemon.saml.parties import IdentityProvider, ServiceProvider

# Test values only, shaped like an AlexisHR connection.
AUDIENCE = "urn:auth0:alexishr:test-conn"
ACS = "https://auth.alexishr.com/login/callback?connection=test-conn"
IDP_ENTITY = "https://idp.example.test/saml2/test-conn"
SSO_URL = "https://idp.example.test/saml2/test-conn/sso"
SLO_URL = "https://idp.example.test/saml2/test-conn/slo"


@pytest.fixture(scope="session")
def idp_key() -> SigningKey:
    return generate_signing_key("provisiond test IdP")


@pytest.fixture(scope="session")
def next_idp_key() -> SigningKey:
    return generate_signing_key("provisiond test IdP (next)")


@pytest.fixture(scope="session")
def sp_key() -> SigningKey:
    return generate_signing_key("test SP")


@pytest.fixture
def idp(idp_key: SigningKey) -> IdentityProvider:
    return IdentityProvider(
        entity_id=IDP_ENTITY, sso_url=SSO_URL, slo_url=SLO_URL, signing_key=idp_key
    )


@pytest.fixture
def sp() -> ServiceProvider:
    return ServiceProvider(entity_id=AUDIENCE, acs_url=ACS)


SpFactory = Callable[..., Saml2Client]


@pytest.fixture
def pysaml2_sp(tmp_path: Path, sp_key: SigningKey) -> SpFactory:
    """Build a pysaml2 SP that trusts the given IdP metadata."""
    key_file, cert_file = tmp_path / "sp.key", tmp_path / "sp.crt"
    write_signing_key(sp_key, key_file, cert_file)

    def make(metadata: bytes, *, sign_requests: bool = False, **sp_options: object) -> Saml2Client:
        sp_service: dict[str, object] = {
            "endpoints": {"assertion_consumer_service": [(ACS, BINDING_HTTP_POST)]},
            "allow_unsolicited": True,
            "want_response_signed": True,
            "want_assertions_signed": True,
            "authn_requests_signed": sign_requests,
            "name_id_format": NAMEID_EMAIL,
        }
        sp_service.update(sp_options)
        config = SPConfig()
        config.load(
            {
                "entityid": AUDIENCE,
                "xmlsec_binary": "/usr/bin/xmlsec1",
                "metadata": {"inline": [metadata.decode()]},
                "service": {"sp": sp_service},
                "key_file": str(key_file),
                "cert_file": str(cert_file),
                "accepted_time_diff": 60,
                "allow_unknown_attributes": True,
            }
        )
        return Saml2Client(config=config)

    return make


@pytest.fixture
def client(pysaml2_sp: SpFactory, idp: IdentityProvider) -> Saml2Client:
    return pysaml2_sp(idp_metadata(idp))
