"""TLS is always verified; a private CA bundle is the only way to trust a private server."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon.scim import RetryPolicy, ScimClient, ScimPermanentError
from tests.scim.conftest import TOKEN
from tests.scim.faults import FaultProxy
from tests.scim.harness import ScimServer


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A throw-away CA (written to ``ca.pem``) and a server context for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = tmp / "server.pem", tmp / "server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return ca_file, server


@pytest.fixture
async def tls_proxy(
    scim_server: ScimServer, tmp_path: Path
) -> AsyncIterator[tuple[FaultProxy, Path]]:
    ca_file, context = _issue(tmp_path)
    async with FaultProxy(scim_server.url, tls=context) as proxy:
        yield proxy, ca_file


async def test_private_ca_bundle_is_trusted(tls_proxy: tuple[FaultProxy, Path]) -> None:
    proxy, ca_file = tls_proxy
    async with ScimClient(proxy.url, lambda: TOKEN, ca_file=ca_file) as client:
        assert (await client.discover()).patch


async def test_unknown_ca_is_refused_without_retrying(
    tls_proxy: tuple[FaultProxy, Path],
) -> None:
    proxy, _ = tls_proxy
    async with ScimClient(proxy.url, lambda: TOKEN, retry=RetryPolicy(base_delay=0)) as client:
        with pytest.raises(ScimPermanentError, match="could not be verified") as caught:
            await client.discover()
    assert caught.value.attempts == 1
    assert proxy.log == []


def test_unreadable_ca_bundle_is_a_clear_setting_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot load the SCIM CA bundle"):
        ScimClient("https://scim.example.com", lambda: TOKEN, ca_file=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load the SCIM CA bundle"):
        ScimClient("https://scim.example.com", lambda: TOKEN, ca_file=junk)
