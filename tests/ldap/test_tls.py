"""TLS with a real certificate, for each read backend: what is accepted and what is refused.

One slapd holds a certificate for the address ``127.0.0.1`` only, signed by a
private CA. Reaching it as ``localhost`` is a host name mismatch; a different
CA, or the system store, does not know its issuer. (Not the other way round:
libldap checks a certificate against the machine's host name when the URL
says ``localhost``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.base import SourceError
from daemon.sources.ldap import LdapOptions, LdapSource
from tests.ldap import seed
from tests.ldap.slapd import READER_DN, READER_PASSWORD, SLAPD, Slapd, start
from tests.support.certs import write_ca_and_server


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if not SLAPD.exists():
        pytest.skip("slapd is not installed (Debian package slapd)")
    root = tmp_path_factory.mktemp("tls")
    _, cert, key = write_ca_and_server(root / "pki", ca_name="Test CA", ips=["127.0.0.1"])
    write_ca_and_server(root / "other", ca_name="Other CA", ips=["127.0.0.1"])
    (root / "slapd").mkdir()
    server = start(root / "slapd", tls=(cert, key))
    try:
        server.modify(seed.base_ldif())
        yield server
    finally:
        server.stop()


def _source(slapd: Slapd, backend: str, url: str, **options: Any) -> LdapSource:
    root = slapd.workdir.parent
    (root / "bind.pw").write_text(READER_PASSWORD)
    validated = LdapOptions.model_validate(
        {
            "url": url,
            "bind_dn": READER_DN,
            "bind_password_file": root / "bind.pw",
            "user_base": seed.PEOPLE,
            "group_base": seed.GROUPS,
            "backend": backend,
            **options,
        }
    )
    context = PluginContext(config_dir=root, state_dir=root, secrets=SecretStore())
    return LdapSource(validated, context)


def _ca(slapd: Slapd, which: str = "pki") -> Path:
    return slapd.workdir.parent / which / "ca.pem"


async def test_ldaps_with_the_private_ca(tls_slapd: Slapd, backend: str) -> None:
    url = f"ldaps://127.0.0.1:{tls_slapd.tls_port}"
    snapshot = await _source(tls_slapd, backend, url, ca_file=_ca(tls_slapd)).fetch(None)
    assert snapshot is not None
    assert len(snapshot.users) == 3


async def test_start_tls_with_the_private_ca(tls_slapd: Slapd, backend: str) -> None:
    url = f"ldap://127.0.0.1:{tls_slapd.port}"
    snapshot = await _source(tls_slapd, backend, url, ca_file=_ca(tls_slapd)).fetch(None)
    assert snapshot is not None
    assert len(snapshot.users) == 3


@pytest.mark.parametrize("scheme", ["ldaps", "ldap"])
@pytest.mark.parametrize(
    ("host", "ca"),
    [
        ("localhost", "pki"),  # the certificate names 127.0.0.1 only
        ("127.0.0.1", "other"),  # signed by a CA we were not given
        ("127.0.0.1", None),  # the system store does not know the private CA
    ],
)
async def test_untrusted_certificates_are_refused(
    tls_slapd: Slapd, backend: str, scheme: str, host: str, ca: str | None
) -> None:
    port = tls_slapd.tls_port if scheme == "ldaps" else tls_slapd.port
    options = {"ca_file": _ca(tls_slapd, ca)} if ca else {}
    source = _source(tls_slapd, backend, f"{scheme}://{host}:{port}", **options)
    with pytest.raises(SourceError) as caught:
        await source.fetch(None)
    # No read happened, and nothing fell back to a clear-text bind.
    assert source.last_read is None
    assert READER_PASSWORD not in str(caught.value)


async def test_tls_verify_off_accepts_any_certificate(tls_slapd: Slapd, backend: str) -> None:
    url = f"ldaps://localhost:{tls_slapd.tls_port}"  # and the wrong name
    snapshot = await _source(tls_slapd, backend, url, tls_verify=False).fetch(None)
    assert snapshot is not None
    assert len(snapshot.users) == 3
