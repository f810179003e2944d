"""TLS is always verified; a private CA bundle is the only way to trust a private server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.scim import RetryPolicy, ScimClient, ScimPermanentError
from tests.scim.conftest import TOKEN
from tests.scim.faults import FaultProxy
from tests.scim.harness import ScimServer
from tests.support.certs import write_ca_and_server


def _issue(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A throw-away CA (``ca.pem``) and a server context for 127.0.0.1 that it signed."""
    ca_file, cert_file, key_file = write_ca_and_server(tmp, ca_name="test CA", ips=["127.0.0.1"])
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
