"""What the core hands to plugins: the context they are created with, and the remote-write gate."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
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


class NotLeader(Exception):
    """This replica may no longer send requests for the lease it was working under."""


@dataclass(frozen=True, slots=True)
class RemoteWrites:
    """The lease a task sends requests to an application under (leader election).

    ``remaining()`` is how many seconds of the lease are left by this
    replica's own monotonic clock (zero or less: lost). No request may start
    with less than ``margin`` left, and none may last longer than what is left,
    so that none is in flight when another replica can take the lease over.
    """

    lease: str
    remaining: Callable[[], float]
    margin: float

    def allowance(self) -> float:
        """Seconds the next request may take; :class:`NotLeader` when it may not start."""
        left = self.remaining()
        if left < self.margin:
            state = "lost" if left <= 0 else f"has {left:.1f}s left, under {self.margin:g}s"
            raise NotLeader(
                f"this replica is no longer the leader of {self.lease} (its lease {state}); "
                "the request was not sent"
            )
        return left


#: Set by the engine while it delivers for a target (and runs its periodic work)
#: under leader election; the SCIM transport checks it before every request.
#: ``None``: no leader election, no limit.
REMOTE_WRITES: ContextVar[RemoteWrites | None] = ContextVar(
    "provisiond_remote_writes", default=None
)


def remote_write_allowance() -> float | None:
    """Seconds a request to an application may take from now, ``None`` for no limit.

    Raises :class:`NotLeader` when this task works under a lease it no longer
    holds firmly enough to start a request.
    """
    gate = REMOTE_WRITES.get()
    return None if gate is None else gate.allowance()
