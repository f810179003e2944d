"""AuthnRequest validation, with pysaml2 creating the requests where it can."""

from __future__ import annotations

import base64
import html
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA256

from daemon.saml.bindings import InboundMessage, decode_post, decode_redirect
from daemon.saml.errors import SamlConfigError, SamlRequestError
from daemon.saml.metadata import idp_metadata
from daemon.saml.names import NS_SAML
from daemon.saml.parties import ServiceProvider
from daemon.saml.replay import MemoryRequestIdStore
from daemon.saml.request import receive_authn_request
from daemon.saml.timefmt import format_instant
from tests.saml.conftest import ACS, AUDIENCE


def _request(
    *,
    issuer: str = AUDIENCE,
    acs: str | None = ACS,
    binding: str | None = BINDING_HTTP_POST,
    instant: datetime | None = None,
    request_id: str = "_req1",
    version: str = "2.0",
) -> InboundMessage:
    attrs = {
        "ID": request_id,
        "Version": version,
        "IssueInstant": format_instant(instant or datetime.now(UTC)),
    }
    if acs is not None:
        attrs["AssertionConsumerServiceURL"] = acs
    if binding is not None:
        attrs["ProtocolBinding"] = binding
    root = etree.Element(
        "{urn:oasis:names:tc:SAML:2.0:protocol}AuthnRequest", attrs, nsmap={"saml": NS_SAML}
    )
    etree.SubElement(root, f"{{{NS_SAML}}}Issuer").text = issuer
    return InboundMessage(BINDING_HTTP_REDIRECT, etree.tostring(root), None)


async def test_minimal_request_is_accepted(sp):
    request = await receive_authn_request(
        _request(acs=None, binding=None), sp, MemoryRequestIdStore()
    )
    assert request.id == "_req1"
    assert request.acs_url == ACS
    assert request.signed is False


async def test_unknown_sp_issuer_is_refused(sp):
    with pytest.raises(SamlRequestError, match="unknown service provider"):
        await receive_authn_request(_request(issuer="urn:evil"), sp, MemoryRequestIdStore())


async def test_unconfigured_acs_is_refused(sp):
    with pytest.raises(SamlRequestError, match="not configured"):
        await receive_authn_request(
            _request(acs="https://evil.example/steal"), sp, MemoryRequestIdStore()
        )


async def test_artifact_binding_is_refused(sp):
    artifact = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"
    with pytest.raises(SamlRequestError, match="binding"):
        await receive_authn_request(_request(binding=artifact), sp, MemoryRequestIdStore())


async def test_replayed_request_id_is_refused(sp):
    store = MemoryRequestIdStore()
    await receive_authn_request(_request(), sp, store)
    with pytest.raises(SamlRequestError, match="already used"):
        await receive_authn_request(_request(), sp, store)


async def test_request_id_is_forgotten_once_expired(sp):
    store = MemoryRequestIdStore()
    expires = datetime.now(UTC) + timedelta(minutes=1)
    assert store.claim_now("k", expires)
    assert not store.claim_now("k", expires)
    later = expires + timedelta(seconds=1)
    assert store.claim_now("k", later + timedelta(minutes=1), now=later)
    assert len(store) == 1


def test_full_store_refuses_rather_than_forgets():
    store = MemoryRequestIdStore(capacity=2)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert store.claim_now("a", expires)
    assert store.claim_now("b", expires)
    with pytest.raises(SamlRequestError, match="too many"):
        store.claim_now("c", expires)


async def test_expired_request_is_refused(sp):
    old = datetime.now(UTC) - timedelta(minutes=30)
    with pytest.raises(SamlRequestError, match="expired"):
        await receive_authn_request(_request(instant=old), sp, MemoryRequestIdStore())


async def test_future_request_is_refused(sp):
    future = datetime.now(UTC) + timedelta(minutes=30)
    with pytest.raises(SamlRequestError, match="future"):
        await receive_authn_request(_request(instant=future), sp, MemoryRequestIdStore())


async def test_small_clock_skew_is_tolerated(sp):
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    await receive_authn_request(_request(instant=ahead), sp, MemoryRequestIdStore())


async def test_wrong_version_and_bad_id_are_refused(sp):
    with pytest.raises(SamlRequestError, match="version"):
        await receive_authn_request(_request(version="1.1"), sp, MemoryRequestIdStore())
    with pytest.raises(SamlRequestError, match="ID"):
        await receive_authn_request(_request(request_id="1 bad"), sp, MemoryRequestIdStore())


async def test_other_message_types_are_refused(sp):
    message = InboundMessage(BINDING_HTTP_POST, b"<Response/>", None)
    with pytest.raises(SamlRequestError, match="not an AuthnRequest"):
        await receive_authn_request(message, sp, MemoryRequestIdStore())


async def test_wrong_destination_is_refused(client, idp, sp):
    _, info = client.prepare_for_authenticate(entityid=idp.entity_id, binding=BINDING_HTTP_REDIRECT)
    message = decode_redirect(urlsplit(dict(info["headers"])["Location"]).query)
    with pytest.raises(SamlRequestError, match="destination"):
        await receive_authn_request(
            message, sp, MemoryRequestIdStore(), destination="https://other.example/sso"
        )


# --- signed requests ---------------------------------------------------------


@pytest.fixture
def signing_sp(sp_key) -> ServiceProvider:
    return ServiceProvider(
        entity_id=AUDIENCE,
        acs_url=ACS,
        want_requests_signed=True,
        request_certificates=(sp_key.certificate,),
    )


@pytest.fixture
def signing_client(pysaml2_sp, idp):
    return pysaml2_sp(idp_metadata(idp, want_authn_requests_signed=True), sign_requests=True)


def _signed_redirect_query(signing_client, idp) -> str:
    _, info = signing_client.prepare_for_authenticate(
        entityid=idp.entity_id,
        binding=BINDING_HTTP_REDIRECT,
        relay_state="state-1",
        sign=True,
        sigalg=SIG_RSA_SHA256,
    )
    return urlsplit(dict(info["headers"])["Location"]).query


def _signed_post_value(signing_client, idp, digest: str = DIGEST_SHA256) -> str:
    _, info = signing_client.prepare_for_authenticate(
        entityid=idp.entity_id,
        binding=BINDING_HTTP_POST,
        sign=True,
        sigalg=SIG_RSA_SHA256,
        digest_alg=digest,
    )
    found = re.search(r'name="SAMLRequest" value="([^"]+)"', info["data"])
    assert found
    return html.unescape(found.group(1))


def test_wanting_signed_requests_without_a_certificate_is_a_config_error():
    with pytest.raises(SamlConfigError, match="no request-signing certificate"):
        ServiceProvider(entity_id=AUDIENCE, acs_url=ACS, want_requests_signed=True)


async def test_signed_redirect_request_is_accepted(signing_client, idp, signing_sp):
    message = decode_redirect(_signed_redirect_query(signing_client, idp))
    assert message.redirect_signature is not None
    request = await receive_authn_request(message, signing_sp, MemoryRequestIdStore())
    assert request.signed is True
    assert request.relay_state == "state-1"


async def test_redirect_with_altered_relay_state_is_refused(signing_client, idp, signing_sp):
    query = _signed_redirect_query(signing_client, idp).replace("state-1", "state-2")
    with pytest.raises(SamlRequestError, match="signature is not valid"):
        await receive_authn_request(decode_redirect(query), signing_sp, MemoryRequestIdStore())


async def test_redirect_with_sha1_is_refused(signing_client, idp, signing_sp):
    query = (
        _signed_redirect_query(signing_client, idp)
        .replace("rsa-sha256", "rsa-sha1")
        .replace("xmldsig-more%23rsa-sha1", "xmldsig%23rsa-sha1")
    )
    with pytest.raises(SamlRequestError, match="unsupported algorithm"):
        await receive_authn_request(decode_redirect(query), signing_sp, MemoryRequestIdStore())


async def test_unsigned_request_is_refused_when_signing_is_required(client, idp, signing_sp):
    _, info = client.prepare_for_authenticate(entityid=idp.entity_id, binding=BINDING_HTTP_REDIRECT)
    message = decode_redirect(urlsplit(dict(info["headers"])["Location"]).query)
    with pytest.raises(SamlRequestError, match="must be signed"):
        await receive_authn_request(message, signing_sp, MemoryRequestIdStore())


async def test_signed_post_request_is_accepted(signing_client, idp, signing_sp):
    message = decode_post({"SAMLRequest": _signed_post_value(signing_client, idp)})
    request = await receive_authn_request(message, signing_sp, MemoryRequestIdStore())
    assert request.signed is True


async def test_tampered_signed_post_request_is_refused(signing_client, idp, signing_sp):
    xml = base64.b64decode(_signed_post_value(signing_client, idp))
    tampered = xml.replace(b'ForceAuthn="false"', b'ForceAuthn="true"')
    if tampered == xml:  # pysaml2 omitted ForceAuthn: add an attribute instead
        tampered = xml.replace(b"<ns0:AuthnRequest ", b'<ns0:AuthnRequest IsPassive="true" ', 1)
        tampered = tampered.replace(
            b"<samlp:AuthnRequest ", b'<samlp:AuthnRequest IsPassive="true" ', 1
        )
    assert tampered != xml
    message = decode_post({"SAMLRequest": base64.b64encode(tampered).decode()})
    with pytest.raises(SamlRequestError, match="signature is not valid"):
        await receive_authn_request(message, signing_sp, MemoryRequestIdStore())


async def test_request_signed_by_another_key_is_refused(signing_client, idp, idp_key):
    sp = ServiceProvider(
        entity_id=AUDIENCE,
        acs_url=ACS,
        want_requests_signed=True,
        request_certificates=(idp_key.certificate,),
    )
    message = decode_post({"SAMLRequest": _signed_post_value(signing_client, idp)})
    with pytest.raises(SamlRequestError, match="signature is not valid"):
        await receive_authn_request(message, sp, MemoryRequestIdStore())
    redirect = decode_redirect(_signed_redirect_query(signing_client, idp))
    with pytest.raises(SamlRequestError, match="signature is not valid"):
        await receive_authn_request(redirect, sp, MemoryRequestIdStore())


async def test_post_request_with_sha1_digest_is_refused(signing_client, idp, signing_sp):
    # pysaml2's default digest is SHA-1; the engine accepts SHA-256 and up only.
    message = decode_post({"SAMLRequest": _signed_post_value(signing_client, idp, DIGEST_SHA1)})
    with pytest.raises(SamlRequestError, match="signature is not valid"):
        await receive_authn_request(message, signing_sp, MemoryRequestIdStore())
