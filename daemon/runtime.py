"""What the core hands to plugins when it creates their sources and targets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.secrets import SecretFile, SecretStore, resolve_secret_path


@dataclass(frozen=True, slots=True)
class PluginContext:
    """Services a source or target may use.

    ``config_dir`` is where relative paths in the configuration are resolved
    from. ``secrets`` reads secret files and registers their values for
    redaction, so that they never reach a log line, metric or error page.
    ``state_dir`` is where a plugin may keep files of its own.
    """

    config_dir: Path
    state_dir: Path
    secrets: SecretStore

    def secret_file(self, value: str | Path) -> SecretFile:
        """The secret file a setting names, found as :func:`resolve_secret_path` finds it.

        Raises :class:`~daemon.secrets.SecretError` when it cannot be read.
        """
        return self.secrets.file(resolve_secret_path(value, self.config_dir))
