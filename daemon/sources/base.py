"""The contract every directory source meets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from daemon.model import ObjectKind, Snapshot
from daemon.runtime import PluginContext


class SourceError(Exception):
    """The source could not be read at all. The cycle fails and nothing downstream changes."""


class Source(Protocol):
    """A directory the daemon polls.

    ``fetch`` returns the whole directory as a :class:`Snapshot`, or ``None``
    when the source can tell cheaply that nothing changed since the snapshot
    whose ``version`` is ``known_version``. A source that can read increments
    (``incremental = True``) still returns a whole snapshot: it merges the
    increment into the last one it read itself. Records that cannot be used go
    into ``Snapshot.skipped``, with ``object_id`` set when the record's id
    could be read: the engine then keeps an object it already knows at its
    last good state instead of removing it. A source that cannot be read
    raises :class:`SourceError`.
    """

    kind: str
    incremental: bool

    async def fetch(self, known_version: str | None) -> Snapshot | None: ...

    async def check(self) -> list[str]:
        """Reach the directory; return human lines for ``provisiond check``."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    """A source's word that the directory changed, pushed between polls.

    ``users`` and ``groups`` hold the source ids of the objects that changed
    (added, modified, renamed or deleted), or ``None`` when the source cannot
    say which: the engine then reads the whole source as on a poll. ``seen_at``
    is the wall-clock time (``time.time()``) the source learnt of the change;
    the engine measures the lag to delivery from it.
    """

    seen_at: float
    users: frozenset[str] | None = None
    groups: frozenset[str] | None = None

    @property
    def everything(self) -> bool:
        return self.users is None or self.groups is None


#: How a watching source hands a notice to the engine. It never blocks and may
#: be called from the event loop only (a worker thread uses
#: ``loop.call_soon_threadsafe``).
Announce = Callable[[ChangeNotice], None]


class WatchingSource(Source, Protocol):
    """A source that can push changes instead of waiting for the next poll.

    ``watch(announce)`` runs until cancelled and calls ``announce`` for every
    change it sees. It raises :class:`SourceError` when it cannot go on (the
    connection dropped, the file cannot be watched); the service starts it
    again with backoff and the periodic poll stays the safety net. After a
    notice, the engine calls ``fetch`` as usual: the snapshot it returns must
    already hold the announced change.
    """

    async def watch(self, announce: Announce) -> None: ...


class LocatingSource(Source, Protocol):
    """A source that can say where the directory keeps an object (the optional ``locate``).

    ``locate(kind, object_id)`` names the record the object was last read
    from as an administrator finds it in the directory (an LDAP entry's DN),
    or ``None`` when the source does not know it (not read yet, or gone). It
    is cheap (no directory request) and never raises. The engine puts it into
    each delivery's :attr:`~daemon.targets.base.Delta.entry` and into the
    log line of a failed delivery. Without it, messages name a user by
    username and email.
    """

    def locate(self, kind: ObjectKind, object_id: str) -> str | None: ...


class PasswordSource(Source, Protocol):
    """A source that can check portal passwords (the optional ``authenticate``).

    ``authenticate(username, password)`` gets the directory's username of an
    existing, active user and a non-empty password, and answers ``True`` or
    ``False``. Never log the password.
    """

    async def authenticate(self, username: str, password: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class SourceType:
    """A kind of source a plugin offers (returned by ``provisiond_source_types``).

    ``options`` validates the ``source.options`` block of the configuration;
    ``create`` builds the source from the validated options.
    """

    kind: str
    options: type[BaseModel]
    create: Callable[[BaseModel, PluginContext], Source]
    description: str = ""
