"""Held removals, for an operator: what the guard holds, and the decisions on it.

The mass-removal guard (``daemon.engine.guard``) holds a cycle's destructive
rows. Here are the operator's side of it, for the CLI, the admin API and the
console alike: :func:`held` lists every held key with the object's name and
why it is held; :func:`approve` and :func:`reject` decide all or some keys.
A decision is made only on keys held when it is recorded (a stale list
decides nothing it did not show), goes to the provisioning log in the same
transaction, and to the audit log. The next cycle plans with it.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from daemon.model import Group, User
from daemon.store import APPROVED, REJECTED, Key, Store

audit = structlog.get_logger("provisiond.audit")


class UnknownKey(ValueError):
    """A key given on the command line names no held object of the target."""


@dataclass(frozen=True, slots=True)
class HeldObject:
    """One held key: the object's name as the directory last said, and why it is held.

    ``decision`` is a decision recorded and not yet used by a cycle
    (``approved`` or ``rejected``), or ``None``; ``actor`` who made it
    (``admin:<username>`` from the console, the OS user from the CLI,
    ``admin-api`` from the admin API) and ``decided_at`` when (Unix seconds).
    """

    key: Key
    name: str
    reason: str
    decision: str | None = None
    actor: str | None = None
    decided_at: float | None = None

    @property
    def ref(self) -> str:
        """The key as commands take it: ``user:<id>`` or ``group:<id>``."""
        return f"{self.key[0]}:{self.key[1]}"


def actor() -> str:
    """Who decides from this process: the OS user, or ``cli`` if it has no name."""
    try:
        return getpass.getuser() or "cli"
    except (KeyError, OSError):
        return "cli"


async def held(store: Store, target: str, only: Sequence[Key] | None = None) -> list[HeldObject]:
    """Every key the target's hold holds, by kind and id, with its name and reason.

    ``only``: just those of these keys that are held (one page of a long list).
    """
    hold = await store.hold(target)
    if hold is None:
        return []
    keys = sorted(hold.keys if only is None else hold.keys & set(only))
    records = await store.records(keys)
    rows = await store.rows(target, keys)
    decisions = await store.decisions(target)
    out: list[HeldObject] = []
    for key in keys:
        record = records.get(key)
        row = rows.get(key)
        recorded = row.desired if row is not None else None
        name, reason = _why(key, record, recorded)
        decision = decisions.get(key)
        pending = decision if decision is not None and not decision.applied else None
        out.append(
            HeldObject(
                key,
                name,
                reason,
                pending.decision if pending is not None else None,
                pending.actor if pending is not None else None,
                pending.decided_at if pending is not None else None,
            )
        )
    return out


def _why(key: Key, record: object, recorded: object) -> tuple[str, str]:
    last = record if record is not None else recorded
    if key[0] == "user":
        name = last.username if isinstance(last, User) else key[1]
        if record is None:
            return name, "removed from the directory: would be deactivated"
        if isinstance(record, User) and not record.active:
            return name, "suspended in the directory: would be deactivated"
        return name, "left every group bound to the target: would be deactivated"
    name = last.name if isinstance(last, Group) else key[1]
    if record is None:
        return name, "deleted from the directory: would be removed"
    if isinstance(record, Group) and isinstance(recorded, Group):
        lost = len(set(recorded.members) - set(record.members))
        if lost:
            return name, f"would lose {lost} of its {len(recorded.members)} members"
    return name, "would lose members"


def resolve(objects: Sequence[HeldObject], refs: Sequence[str]) -> list[Key]:
    """The held keys ``refs`` name: ``user:<id>``, ``group:<id>``, or an id or name alone.

    Raises :class:`UnknownKey` naming every ref that matches no held object,
    or more than one.
    """
    keys: list[Key] = []
    unknown: list[str] = []
    for ref in refs:
        kind, _, ident = ref.partition(":")
        if kind in ("user", "group") and ident:
            found = [o.key for o in objects if o.key == (kind, ident)]
        else:
            folded = ref.casefold()
            found = [o.key for o in objects if ref == o.key[1] or folded == o.name.casefold()]
        if len(found) != 1:
            unknown.append(ref)
        else:
            keys.extend(found)
    if unknown:
        raise UnknownKey(
            "not held (see `provisiond held`): " + ", ".join(repr(u) for u in unknown)
        )
    return keys


async def approve(
    store: Store, target: str, keys: Sequence[Key] | None, actor: str, at: float
) -> list[Key]:
    """Release held keys (``None``: every key held now); the keys released."""
    if keys is None:
        hold = await store.hold(target)
        keys = sorted(hold.keys) if hold is not None else []
    decided = await store.decide(target, keys, APPROVED, actor, at)
    if decided:
        audit.info(
            "held removals approved", target=target, actor=actor, objects=_refs(decided)
        )
    return decided


async def reject(
    store: Store, target: str, keys: Sequence[Key], actor: str, at: float
) -> list[Key]:
    """Keep held keys as the target has them until their directory data changes again."""
    decided = await store.decide(target, keys, REJECTED, actor, at)
    if decided:
        audit.info(
            "held removals rejected: the target keeps these objects as they are until "
            "their directory records change",
            target=target,
            actor=actor,
            objects=_refs(decided),
        )
    return decided


def _refs(keys: Sequence[Key]) -> list[str]:
    return [f"{k}:{i}" for k, i in keys]
