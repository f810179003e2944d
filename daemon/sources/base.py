"""The contract every directory source meets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from daemon.model import Snapshot
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
