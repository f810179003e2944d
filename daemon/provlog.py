"""The provisioning log's entries, as the engine makes them (pure functions).

One entry per operation provisiond decides or makes, per target and object:
a new desired state planned or held, a delivery and its outcome. Entries
name the kinds of change and the attributes that changed, never a value:
no attribute value (a password a directory may hold, a phone number) can
reach the log. The store writes each batch in the transaction that commits
what it describes (``Store.commit``, ``Store.record``), and the operator's
decisions on held keys in the one that records them (``Store.decide``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from daemon.changes import (
    Change,
    GroupRenamed,
    MembersAdded,
    MembersRemoved,
    UserChanged,
    UserReactivated,
    UserSuspended,
)
from daemon.model import Group, User
from daemon.store import DesiredRow, Key, LogEntry

#: Longest error text an entry keeps (an application may answer with a page).
MAX_ERROR = 1000


def attributes(change: Change) -> tuple[str, ...]:
    """The names of the attributes one change touches (never their values)."""
    match change:
        case UserChanged(fields=fields):
            return tuple(fields)
        case UserSuspended() | UserReactivated():
            return ("state",)
        case GroupRenamed():
            return ("name",)
        case MembersAdded() | MembersRemoved():
            return ("members",)
    return ()


#: The tuples of kinds and of attribute names entries hold, one of each in memory: a
#: first sync makes an entry for every object, and they are a few distinct ones.
_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}


def _shared(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(_TUPLES) >= 4096:
        return names
    return _TUPLES.setdefault(names, names)


def summary(changes: Iterable[Change]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The change kinds and the attribute names, each once, in order of appearance."""
    kinds: dict[str, None] = {}
    names: dict[str, None] = {}
    for change in changes:
        kinds[change.name] = None
        names.update(dict.fromkeys(attributes(change)))
    return _shared(tuple(kinds)), _shared(tuple(names))


_USER_REMOVED, _GROUP_REMOVED = ("user_removed",), ("group_removed",)
_USER_SUSPENDED, _MEMBERS_CHANGED = ("user_suspended",), ("members_changed",)
_USER_ADDED = ("user_added",)


def _row_kind(row: DesiredRow) -> tuple[str, ...]:
    """What a planned row does when the directory record itself did not change (scope)."""
    obj = row.obj
    if obj is None:
        return _USER_REMOVED if row.key[0] == "user" else _GROUP_REMOVED
    if isinstance(obj, User) and row.active is False:
        return _USER_SUSPENDED
    if isinstance(obj, Group):
        return _MEMBERS_CHANGED
    return _USER_ADDED


def planned(
    target: str,
    cycle: str | None,
    rows: Iterable[DesiredRow],
    held: Iterable[Key],
    changes: Mapping[Key, list[Change]],
    at: float,
) -> list[LogEntry]:
    """The entries of one target's plan: each row planned, and each held key."""
    out: list[LogEntry] = []
    for row in rows:
        kinds, names = summary(changes.get(row.key, ()))
        out.append(
            LogEntry(at, target, row.key, "planned", cycle, kinds or _row_kind(row), names)
        )
    for key in sorted(held):
        kinds, names = summary(changes.get(key, ()))
        out.append(LogEntry(at, target, key, "held", cycle, kinds, names))
    return out


def delivered(
    target: str,
    cycle: str | None,
    key: Key,
    changes: Iterable[Change],
    ok: bool,
    error: str | None,
    requests: tuple[tuple[str, str, int | None], ...],
    at: float,
) -> LogEntry:
    """The entry of one delivery: its changes, its last request, and the outcome."""
    kinds, names = summary(changes)
    method, path, status = requests[-1] if requests else (None, None, None)
    return LogEntry(
        at, target, key, "delivered" if ok else "failed", cycle, kinds, names, method, path,
        status, None if error is None else error[:MAX_ERROR],
    )  # fmt: skip


def by_key(changes: Iterable[Change]) -> dict[Key, list[Change]]:
    """The changes of a cycle, grouped by the object they are about."""
    out: dict[Key, list[Change]] = {}
    for change in changes:
        out.setdefault(change.key, []).append(change)
    return out
