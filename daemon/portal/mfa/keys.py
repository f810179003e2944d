"""The key that seals second-factor secrets at rest, and where it comes from.

TOTP secrets are kept in the state store sealed with AES-GCM under this key,
and recovery codes only as keyed digests, so a copy of the database alone
does not let anyone compute a user's codes. The key lives in a file, never
in the store: the file ``http.public.mfa_key_file`` names, or else
``<state_dir>/portal-mfa.key``, generated once (256 random bits, mode 0600).

The store remembers the key's id (a keyed fingerprint, meta
:data:`STORE_KEY_ID`). A key whose id differs from the store's, or a key file
that is gone while the store has an id, stops the start: the secrets sealed
with the old key cannot be opened, and the portal must not carry on as if
nobody had enrolled. The key itself is registered with the
:class:`~daemon.secrets.SecretStore`, so it is redacted from every output.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path
from secrets import token_bytes, token_hex
from typing import Final

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from daemon.portal.errors import PortalConfigError
from daemon.secrets import SecretError, SecretStore
from daemon.store import Store

#: The key file generated into the state directory when no file is configured.
GENERATED_KEY_NAME: Final = "portal-mfa.key"
#: ``meta`` key under which the store remembers the id of the key its factors are sealed with.
STORE_KEY_ID: Final = "mfa_key_id"
#: The setting that names the key file, for messages.
SETTING: Final = "http.public.mfa_key_file"

_MIN_KEY_CHARS: Final = 32
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
# Sealed values are short (a TOTP secret); anything far longer is not ours.
_MAX_SEALED_CHARS: Final = 4096

log = structlog.get_logger("provisiond.portal")


class MfaKeyError(PortalConfigError):
    """The MFA key is unusable, or a sealed value does not open with it; the message says
    which setting, file or record, and what to do."""


class MfaKeyNotCurrent(MfaKeyError):
    """Another replica's key is the store's now: this one must not seal or digest anything."""


def _derive(material: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(material)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MfaKey:
    """AES-GCM sealing and keyed digests, with sub-keys derived from one secret.

    ``id`` is a short keyed fingerprint of the key: it tells keys apart in
    the store and in messages, and reveals nothing of the key.
    """

    def __init__(self, material: bytes) -> None:
        if len(material) < _MIN_KEY_CHARS:
            raise MfaKeyError(f"the MFA key must be at least {_MIN_KEY_CHARS} bytes")
        self._aead = AESGCM(_derive(material, b"provisiond mfa seal v1"))
        self._mac_key = _derive(material, b"provisiond mfa digest v1")
        self.id: str = _derive(material, b"provisiond mfa key id v1").hex()[:16]

    def __repr__(self) -> str:
        return f"MfaKey(id={self.id!r})"

    def seal(self, plain: bytes, *, aad: str) -> str:
        """``plain`` encrypted and authenticated, bound to ``aad`` (base64url text).

        ``aad`` says what the value is for (a user and factor id): a sealed
        value copied to another record does not open there.
        """
        nonce = token_bytes(_NONCE_BYTES)
        return _b64encode(nonce + self._aead.encrypt(nonce, plain, aad.encode("utf-8")))

    def open(self, sealed: str, *, aad: str) -> bytes:
        """The plain value of :meth:`seal`; :class:`MfaKeyError` if it was sealed with
        another key or for another ``aad``, or was altered."""
        try:
            if len(sealed) > _MAX_SEALED_CHARS:
                raise ValueError("too long")
            raw = _b64decode(sealed)
            if len(raw) < _NONCE_BYTES + _TAG_BYTES:
                raise ValueError("too short")
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad.encode("utf-8"))
        except (InvalidTag, ValueError, binascii.Error, UnicodeEncodeError):
            raise MfaKeyError(
                f"a sealed second-factor secret ({aad}) does not open with MFA key {self.id}: "
                "it was sealed with another key or altered in the state store"
            ) from None

    def digest(self, purpose: str, value: str) -> str:
        """A keyed HMAC-SHA256 of ``value`` for ``purpose``, as hex: kept instead of the
        value where the value must not be stored (a recovery code)."""
        message = purpose.encode("utf-8") + b"\0" + value.encode("utf-8")
        return hmac.new(self._mac_key, message, hashlib.sha256).hexdigest()


def _generate(path: Path) -> None:
    """Write a new random key to ``path`` (mode 0600), unless the file exists."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise MfaKeyError(f"cannot create the MFA key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(token_hex(32) + "\n")


def _lost(known: str) -> str:
    return (
        f"the state store's second factors are sealed with MFA key {known} (meta "
        f"{STORE_KEY_ID}). Put that key file back; if it is lost for good, `provisiond mfa "
        "reset --all` deletes every user's second factors (they enrol again) and forgets the key"
    )


async def load_mfa_key(
    path: Path | None, state_dir: Path, store: Store, secrets: SecretStore
) -> MfaKey:
    """The key in ``path`` (``http.public.mfa_key_file``), else in ``<state_dir>/portal-mfa.key``,
    generated there on the first start; checked against the key id the store remembers.

    Raises :class:`MfaKeyError`, naming the setting and the file, when the file
    cannot be read or is too short, and, while the store holds second factors,
    when it is missing or another key than the store's. Before anyone has a
    second factor the store's key id binds nothing: a replica with another key
    (its own generated one, say, next to a replica that started first) takes
    over the id with a warning, and enrolment is refused on any replica whose
    key is then not the store's (:func:`key_is_current`).
    """
    recorded = await store.get_meta(STORE_KEY_ID)
    # An empty id: `provisiond mfa reset --all` forgot the old key; the next key is taken.
    known = recorded or None
    configured = path is not None
    if path is None:
        path = state_dir / GENERATED_KEY_NAME
    where = f"{SETTING} {path}" if configured else f"the MFA key {path} ({SETTING} is not set)"
    hint = "" if configured else f"; with several replicas, set {SETTING} to one key file on each"
    if not path.exists():
        if known is not None and await _sealed_anything(store):
            raise MfaKeyError(f"{where} does not exist, but {_lost(known)}{hint}")
        if configured:
            raise MfaKeyError(f"{where} does not exist; generate one with `openssl rand -hex 32`")
        _generate(path)
    try:
        value = secrets.read(path).strip()
    except SecretError as exc:
        raise MfaKeyError(f"{SETTING}: {exc}") from None
    if len(value) < _MIN_KEY_CHARS:
        raise MfaKeyError(
            f"{where}: the key must be at least {_MIN_KEY_CHARS} characters; generate one "
            "with `openssl rand -hex 32`"
        )
    key = MfaKey(value.encode("utf-8"))
    if known is None:
        if recorded == "":
            await store.set_meta(STORE_KEY_ID, key.id)
            known = key.id
        else:
            known = await store.init_meta(STORE_KEY_ID, key.id)
    if known != key.id:
        if await _sealed_anything(store):
            raise MfaKeyError(f"{where} holds MFA key {key.id}, but {_lost(known)}{hint}")
        # Nothing is sealed yet: the id binds nothing, and refusing to start here
        # would stop an upgraded set-up of several replicas that never used MFA.
        await store.set_meta(STORE_KEY_ID, key.id)
        log.warning(
            "the state store named another MFA key, but no one has a second factor yet, so "
            f"this replica's key is the store's now; with several replicas, set {SETTING} to "
            "one key file on each, or enrolment works only on the replica that started last",
            key_id=key.id,
            previous_key_id=known,
            path=str(path),
        )
    return key


async def key_is_current(store: Store, key: MfaKey) -> bool:
    """Whether the store's second factors are (to be) sealed with ``key``.

    False when another replica with another key file took the store's key id
    over since this one started (see :func:`load_mfa_key`): what this replica
    sealed would not open there, so it must not enrol anyone.
    """
    return await store.get_meta(STORE_KEY_ID) == key.id


async def _sealed_anything(store: Store) -> bool:
    """Whether any user has a factor or recovery code the key sealed or digested."""
    return bool(await store.factor_users())
