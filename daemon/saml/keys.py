"""The IdP's signing key and certificate: make them, store them, load them, follow rotations."""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from daemon.saml.errors import SamlConfigError
from daemon.secrets import SECRETS, SecretError, SecretStore

log = structlog.get_logger("provisiond.saml")

KEY_SIZES: Final = (2048, 3072)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An RSA private key with the self-signed certificate that publishes it."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    #: PEM of the certificate, line breaks kept: what an SP admin pastes.
    certificate_pem: str

    @property
    def certificate_base64(self) -> str:
        """The DER certificate in one base64 line, as metadata's X509Certificate holds it."""
        return certificate_base64(self.certificate)

    def seconds_until_expiry(self, now: datetime | None = None) -> float:
        """Seconds until the certificate's notAfter; negative once it has expired."""
        return seconds_until_expiry(self.certificate, now)


def certificate_base64(cert: x509.Certificate) -> str:
    """``cert`` as one line of base64 DER (no PEM armour)."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def seconds_until_expiry(cert: x509.Certificate, now: datetime | None = None) -> float:
    """Seconds until ``cert`` expires; negative once it has."""
    now = now or datetime.now(UTC)
    return (cert.not_valid_after_utc - now).total_seconds()


def generate_signing_key(
    common_name: str,
    *,
    key_size: int = 2048,
    valid_days: int = 3650,
    now: datetime | None = None,
) -> SigningKey:
    """A new RSA key and a self-signed certificate for ``common_name``.

    SAML SPs pin the certificate from metadata rather than walking a chain,
    so self-signed is the norm; ``valid_days`` only sets when a rotation is due.
    """
    if key_size not in KEY_SIZES:
        raise SamlConfigError(f"RSA key size must be one of {KEY_SIZES}, not {key_size}")
    if valid_days < 1:
        raise SamlConfigError("certificate validity must be at least one day")
    now = now or datetime.now(UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Back-date a little so an SP whose clock runs behind accepts it at once.
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return SigningKey(private_key=key, certificate=cert, certificate_pem=pem)


def private_key_pem(key: SigningKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (for writing to a secret file)."""
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_signing_key(key: SigningKey, key_path: Path, cert_path: Path) -> None:
    """Write the key (mode 0600) and the certificate (mode 0644), each atomically.

    The key file is created with its final mode, so it is never readable by
    others, not even for an instant; a reader sees the old or the new file.
    """
    _write_atomic(key_path, private_key_pem(key), 0o600)
    _write_atomic(cert_path, key.certificate_pem.encode("ascii"), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # mkstemp creates the file 0600 with O_EXCL; fchmod then only ever widens
    # the certificate, never the key.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode != 0o600:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_certificate(cert_path: Path) -> x509.Certificate:
    """Read one PEM certificate (for example the next key's, to publish ahead of a rotation)."""
    try:
        data = cert_path.read_bytes()
    except OSError as exc:
        raise SamlConfigError(
            f"certificate file {cert_path} cannot be read: {exc.strerror}"
        ) from None
    return parse_certificate(data, source=str(cert_path))


def parse_certificate(data: bytes | str, *, source: str = "certificate") -> x509.Certificate:
    """A certificate from PEM, or from bare base64 DER as SP metadata and admins provide it."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        der = base64.b64decode(b"".join(raw.split()), validate=True)
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise SamlConfigError(f"{source} is not a valid X.509 certificate") from None


def load_signing_key(
    key_path: Path, cert_path: Path, *, secrets: SecretStore = SECRETS
) -> SigningKey:
    """Load the key (a secret file, registered for redaction) and its certificate.

    Refuses a key that is not RSA of an accepted size, and a certificate
    whose public key is not the key's.
    """
    pem = secrets.read(key_path)
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii", "replace"), password=None)
    except (ValueError, TypeError):
        # The loader's own message could quote key material: keep it out.
        raise SamlConfigError(
            f"key file {key_path} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size not in KEY_SIZES:
        raise SamlConfigError(
            f"key file {key_path} must hold an RSA key of {' or '.join(map(str, KEY_SIZES))} bits"
        )
    cert = load_certificate(cert_path)
    if cert.public_key() != key.public_key():
        raise SamlConfigError(
            f"certificate {cert_path} does not belong to the key in {key_path}; "
            "regenerate the certificate or fix the paths"
        )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return SigningKey(private_key=key, certificate=cert, certificate_pem=cert_pem)


class SigningKeys:
    """One application's signing key and certificates, re-read when their files change.

    A rotation needs no restart: the files are looked at (inode, size,
    mtime) on every use, and loaded again when any of them changed. A change
    that does not load (a half-written file, a mismatched pair, a file
    briefly missing) keeps the previous key and logs why. Only the first
    load raises.
    """

    def __init__(
        self,
        key_file: Path,
        cert_file: Path,
        next_cert_file: Path | None = None,
        *,
        secrets: SecretStore = SECRETS,
    ) -> None:
        self._files = (key_file, cert_file, next_cert_file)
        self._secrets = secrets
        self._stamp = self._stat()
        self._key, self._next = self._load()

    def current(self) -> tuple[SigningKey, tuple[x509.Certificate, ...]]:
        """The signing key, and the extra certificates to publish (the next one)."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._key, self._next = self._load()
                log.info("SAML signing key reloaded", key_file=str(self._files[0]))
            except (SamlConfigError, SecretError) as exc:
                log.error(
                    "SAML signing key change not loaded; the previous key stays", error=str(exc)
                )
        return self._key, self._next

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in self._files:
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            out.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else None)
        return tuple(out)

    def _load(self) -> tuple[SigningKey, tuple[x509.Certificate, ...]]:
        key_file, cert_file, next_file = self._files
        key = load_signing_key(key_file, cert_file, secrets=self._secrets)
        extra = (load_certificate(next_file),) if next_file is not None else ()
        return key, extra
