"""Secrets come from files, are re-read when the file changes, and never reach output.

Every value read here is remembered by the :class:`SecretStore`, and the
logging and HTTP layers pass text through :meth:`SecretStore.redact` before
it leaves the process.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

REDACTED = "[REDACTED]"
# Values shorter than this are not redacted by substring (they would mangle
# ordinary words); the settings layer refuses such short secrets anyway.
MIN_SECRET_LENGTH = 8


class SecretError(Exception):
    """A secret file is missing, unreadable, empty, or too short."""


def resolve_secret_path(value: str | Path, config_dir: Path) -> Path:
    """Find a secret file named in the configuration.

    Absolute paths are used as they are. A relative path is looked up in
    systemd's ``$CREDENTIALS_DIRECTORY`` first (``LoadCredential=``), then
    relative to the configuration file's directory.
    """
    path = Path(value)
    if path.is_absolute():
        return path
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / path).exists():
        return Path(creds) / path
    return config_dir / path


@dataclass
class SecretFile:
    """A secret file whose value follows the file: rotation needs no restart."""

    path: Path
    store: SecretStore
    _stamp: tuple[int, int, int] | None = None
    _value: str = ""

    def value(self) -> str:
        """The current value, re-read when the file's inode, size or mtime changed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None:
                return self._value  # keep the last good value while the file is swapped
            raise SecretError(f"secret file {self.path} does not exist") from None
        except OSError as exc:
            if self._stamp is not None:
                return self._value
            raise SecretError(f"secret file {self.path} cannot be read: {exc.strerror}") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._value = self.store.read(self.path)
            self._stamp = stamp
        return self._value

    @property
    def changed(self) -> bool:
        """Whether the file differs from the value last read."""
        try:
            st = self.path.stat()
        except OSError:
            return False
        return (st.st_ino, st.st_size, st.st_mtime_ns) != self._stamp


@dataclass
class SecretStore:
    """Reads secret files and remembers every value for redaction."""

    _values: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, path: Path) -> str:
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretError(f"secret file {path} does not exist") from None
        except OSError as exc:
            raise SecretError(f"secret file {path} cannot be read: {exc.strerror}") from None
        value = raw.strip()
        if not value:
            raise SecretError(f"secret file {path} is empty")
        if len(value) < MIN_SECRET_LENGTH:
            raise SecretError(
                f"secret file {path} holds fewer than {MIN_SECRET_LENGTH} characters; "
                "use a longer, random value"
            )
        self.register(value)
        return value

    def file(self, path: Path) -> SecretFile:
        """A :class:`SecretFile` bound to this store; reads it once now to fail early."""
        secret = SecretFile(path, self)
        secret.value()
        return secret

    def register(self, value: str) -> None:
        """Remember a secret value obtained elsewhere (e.g. an environment variable)."""
        if len(value) >= MIN_SECRET_LENGTH:
            with self._lock:
                self._values.add(value)

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``[REDACTED]``."""
        if not self._values:
            return text
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


#: The process-wide store. Tests may create their own.
SECRETS = SecretStore()
