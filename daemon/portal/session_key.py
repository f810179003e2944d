"""The key that signs session cookies and CSRF tokens, and where it comes from.

In order: the file ``http.public.session_key_file`` names; else the file an
older provisiond generated into the state directory, if it is there; else a
key generated once into the state store (``meta`` key
:data:`STORE_KEY_NAME`), where every replica on a shared store finds the same
one. The key is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Final

from daemon.secrets import SecretError, SecretStore
from daemon.store import Store

#: File an older provisiond generated into the state directory; still used when present.
GENERATED_KEY_NAME: Final = "portal-session.key"
#: ``meta`` key of the key generated into the state store.
STORE_KEY_NAME: Final = "portal_session_key"
_MIN_KEY_CHARS: Final = 32


class SessionKeyError(Exception):
    """The session key file is unusable; the message names the file and the fix."""


class SessionKey:
    """HMAC-SHA256 over cookie values and CSRF bindings, with one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_CHARS:
            raise SessionKeyError(f"the session key must be at least {_MIN_KEY_CHARS} bytes")
        self._key = key

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(
            self._key, purpose.encode() + b"\0" + value.encode("utf-8"), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, value: str) -> str:
        """``value.mac``, for a cookie."""
        return f"{value}.{self._mac('cookie', value)}"

    def unsign(self, signed: str | None) -> str | None:
        """The value if ``signed`` carries a valid MAC, else ``None``."""
        if not signed or len(signed) > 256:
            return None
        value, _, mac = signed.rpartition(".")
        if not value or not hmac.compare_digest(mac, self._mac("cookie", value)):
            return None
        return value

    def digest(self, purpose: str, value: str) -> str:
        """A keyed digest of ``value`` for ``purpose``: stored instead of ``value``
        where the value must not be kept (a typed username, for the throttle)."""
        return self._mac(f"digest:{purpose}", value)

    def csrf_token(self, binding: str) -> str:
        """The CSRF token of the session or pre-session ``binding``."""
        return self._mac("csrf", binding)

    def csrf_ok(self, binding: str | None, token: str | None) -> bool:
        """Whether ``token`` is the CSRF token of ``binding`` (constant time)."""
        if not binding or not token or len(token) > 128:
            return False
        return hmac.compare_digest(token, self.csrf_token(binding))


async def load_session_key(
    key_file: Path | None, state_dir: Path, secrets_store: SecretStore, store: Store
) -> SessionKey:
    """The configured key file's content, an earlier generated file, or a key in ``store``.

    Without a configured file: a file ``state_dir/portal-session.key`` that
    an older provisiond generated keeps being used (an upgrade keeps
    everyone signed in). Otherwise 256 random bits are stored in the state
    store once, insert-if-absent, so replicas starting together on one store
    agree on one key, and a restart keeps it.
    """
    if key_file is not None:
        try:
            value = secrets_store.read(key_file).strip()
        except SecretError as exc:
            raise SessionKeyError(f"http.public.session_key_file: {exc}") from None
        if len(value) < _MIN_KEY_CHARS:
            raise SessionKeyError(
                f"http.public.session_key_file {key_file}: the key must be at least "
                f"{_MIN_KEY_CHARS} characters; generate one with `openssl rand -hex 32`"
            )
        return SessionKey(value.encode("utf-8"))
    path = state_dir / GENERATED_KEY_NAME
    if path.exists():
        try:
            value = secrets_store.read(path).strip()
        except SecretError as exc:
            raise SessionKeyError(str(exc)) from None
        if len(value) < _MIN_KEY_CHARS:
            raise SessionKeyError(
                f"session key {path} is too short; delete it to use a key kept in the state store"
            )
        return SessionKey(value.encode("utf-8"))
    value = (await store.init_meta(STORE_KEY_NAME, secrets.token_hex(32))).strip()
    secrets_store.register(value)
    if len(value) < _MIN_KEY_CHARS:
        raise SessionKeyError(
            f"the session key in the state store (meta {STORE_KEY_NAME}) is too short"
        )
    return SessionKey(value.encode("utf-8"))
