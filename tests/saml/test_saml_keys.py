"""Signing keys: generation, file modes, loading, expiry."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from daemon.saml.errors import SamlConfigError
from daemon.saml.keys import (
    generate_signing_key,
    load_certificate,
    load_signing_key,
    parse_certificate,
    write_signing_key,
)
from daemon.secrets import SecretStore


def test_generated_certificate(idp_key):
    cert = idp_key.certificate
    assert (
        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "provisiond test IdP"
    )
    assert cert.issuer == cert.subject
    assert idp_key.private_key.key_size == 2048
    assert idp_key.certificate_pem.startswith("-----BEGIN CERTIFICATE-----\n")


def test_validity_and_expiry_gauge():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    key = generate_signing_key("x", valid_days=30, now=now)
    assert key.certificate.not_valid_after_utc == now + timedelta(days=30)
    assert key.seconds_until_expiry(now) == pytest.approx(30 * 86400)
    assert key.seconds_until_expiry(now + timedelta(days=31)) < 0


def test_bad_parameters_are_refused():
    with pytest.raises(SamlConfigError, match="key size"):
        generate_signing_key("x", key_size=1024)
    with pytest.raises(SamlConfigError, match="validity"):
        generate_signing_key("x", valid_days=0)


def test_key_file_is_created_0600_and_loads_back(tmp_path, idp_key):
    old_umask = os.umask(0)  # even with a permissive umask the key is never readable by others
    try:
        write_signing_key(idp_key, tmp_path / "idp.key", tmp_path / "idp.crt")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "idp.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "idp.crt").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    store = SecretStore()
    loaded = load_signing_key(tmp_path / "idp.key", tmp_path / "idp.crt", secrets=store)
    assert loaded.certificate == idp_key.certificate
    assert loaded.private_key.private_numbers() == idp_key.private_key.private_numbers()
    pem = (tmp_path / "idp.key").read_text()
    assert store.redact(f"oops {pem.strip()} leaked") == "oops [REDACTED] leaked"


def test_mismatched_key_and_certificate_are_refused(tmp_path, idp_key, next_idp_key):
    write_signing_key(idp_key, tmp_path / "a.key", tmp_path / "a.crt")
    write_signing_key(next_idp_key, tmp_path / "b.key", tmp_path / "b.crt")
    with pytest.raises(SamlConfigError, match="does not belong"):
        load_signing_key(tmp_path / "a.key", tmp_path / "b.crt", secrets=SecretStore())


def test_garbage_key_file_is_refused_without_echoing_it(tmp_path, idp_key):
    write_signing_key(idp_key, tmp_path / "a.key", tmp_path / "a.crt")
    (tmp_path / "a.key").write_text("-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n")
    with pytest.raises(SamlConfigError) as caught:
        load_signing_key(tmp_path / "a.key", tmp_path / "a.crt", secrets=SecretStore())
    assert "SECRETSTUFF" not in str(caught.value)


def test_certificate_formats(tmp_path, idp_key):
    (tmp_path / "c.pem").write_text(idp_key.certificate_pem)
    assert load_certificate(tmp_path / "c.pem") == idp_key.certificate
    assert parse_certificate(idp_key.certificate_base64) == idp_key.certificate
    assert isinstance(parse_certificate(idp_key.certificate_pem.encode()), x509.Certificate)
    with pytest.raises(SamlConfigError, match=r"not a valid X\.509"):
        parse_certificate("bm90IGEgY2VydA==")
    with pytest.raises(SamlConfigError, match="cannot be read"):
        load_certificate(tmp_path / "missing.pem")
