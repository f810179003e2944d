"""The key that signs session cookies and CSRF tokens, and where it comes from."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from daemon.secrets import SecretError, SecretStore

#: File generated in the state directory when no ``session_key_file`` is configured.
GENERATED_KEY_NAME: Final = "portal-session.key"
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

    def csrf_token(self, binding: str) -> str:
        """The CSRF token of the session or pre-session ``binding``."""
        return self._mac("csrf", binding)

    def csrf_ok(self, binding: str | None, token: str | None) -> bool:
        """Whether ``token`` is the CSRF token of ``binding`` (constant time)."""
        if not binding or not token or len(token) > 128:
            return False
        return hmac.compare_digest(token, self.csrf_token(binding))


def load_session_key(
    key_file: Path | None, state_dir: Path, secrets_store: SecretStore
) -> SessionKey:
    """The configured key file's content, or a key generated once into ``state_dir``.

    A generated key is 256 random bits written with mode 0600; it survives
    restarts so sessions do too (the in-memory session store does not, but a
    shared store would).
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
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SessionKeyError(f"cannot create the session key {path}: {exc.strerror}") from None
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    try:
        value = secrets_store.read(path).strip()
    except SecretError as exc:
        raise SessionKeyError(str(exc)) from None
    if len(value) < _MIN_KEY_CHARS:
        raise SessionKeyError(f"session key {path} is too short; delete it to generate a new one")
    return SessionKey(value.encode("utf-8"))
