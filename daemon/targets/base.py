"""The contract every target meets, and the units of delivery."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from daemon.changes import Change
from daemon.model import DirectoryObject, ObjectKind
from daemon.runtime import PluginContext
from daemon.store import Store


@dataclass(frozen=True, slots=True)
class Delta:
    """Everything one object needs to go from what the target last wrote to what it should hold.

    ``written`` is the record as last delivered successfully (``None``: never
    delivered, or deleted). ``desired`` is the record the target should hold
    (``None``: it should be removed). ``changes`` is ``diff(written,
    desired)``. ``remote_id`` is the id the target returned before, if any.
    ``attempts`` counts failed deliveries of this desired state so far.
    ``entry`` is where the directory keeps the object (an LDAP entry's DN),
    when the source can say (see :class:`~daemon.sources.base.LocatingSource`):
    a message about a value of the record names it, since the id alone
    (``user:<entryUUID>``) leads nobody to the entry.

    Deliveries are at-least-once: after a crash a delta may come again even if
    it was applied. A target makes that harmless (match before create, treat
    "already there" as success).
    """

    kind: ObjectKind
    object_id: str
    changes: tuple[Change, ...]
    desired: DirectoryObject | None
    written: DirectoryObject | None
    remote_id: str | None = None
    attempts: int = 0
    entry: str | None = None

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return (self.kind, self.object_id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delta.

    ``ok``: the target now holds ``desired``; the core records it as written.
    Otherwise ``error`` says why, for the operator (never a secret).
    ``permanent`` errors are not retried until the desired record changes (or
    the slow permanent-retry period passes); others back off exponentially, or
    wait ``retry_after`` seconds when the target knows better.
    ``requests`` are the requests made for it, in order, as
    ``(method, path, status)`` (``status`` ``None``: no answer), for the
    provisioning log; a path holds no secret (no query string).
    """

    kind: ObjectKind
    object_id: str
    ok: bool
    remote_id: str | None = None
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None
    requests: tuple[tuple[str, str, int | None], ...] = ()

    @classmethod
    def success(cls, delta: Delta, remote_id: str | None = None) -> Outcome:
        return cls(delta.kind, delta.object_id, True, remote_id or delta.remote_id)

    @classmethod
    def failure(
        cls,
        delta: Delta,
        error: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> Outcome:
        return cls(
            delta.kind,
            delta.object_id,
            False,
            delta.remote_id,
            error,
            permanent,
            retry_after,
        )


class Target(Protocol):
    """One configured application instance (``targets[]`` in the configuration).

    ``deliver`` gets the deltas of one cycle in delivery order (users, then
    groups, then memberships, removals last) and returns one
    :class:`Outcome` per delta. An exception from ``deliver`` fails every
    delta of the batch (they are retried) and never stops other targets.
    """

    name: str
    kind: str

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]: ...

    async def check(self, write_test: bool = False) -> list[str]:
        """Reach the application; return human lines for ``provisiond check``."""
        ...

    async def aclose(self) -> None: ...


class StatefulTarget(Target, Protocol):
    """A target that remembers things between deliveries, in the core's store.

    ``start(store)`` is optional: when a target has it, the engine calls it once,
    before the first delivery. A target keeps everything it must remember
    through the store (``Store.target_links``, ``Store.save_links``,
    ``Store.target_meta``) and never opens a database of its own.
    """

    async def start(self, store: Store) -> None: ...


@dataclass(frozen=True, slots=True)
class TargetType:
    """A kind of target a plugin offers (returned by ``provisiond_target_types``).

    ``create(name, options, context)`` builds a target named ``name`` from its
    validated ``options`` block.
    """

    kind: str
    options: type[BaseModel]
    create: Callable[[str, BaseModel, PluginContext], Target]
    description: str = ""
