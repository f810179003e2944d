"""How records, keys and holds become column values and back: the same on every backend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from daemon.model import DirectoryObject, Group, ObjectKind, User, decode, encode
from daemon.store import Decision, DueRow, FactorRecord, Hold, Key, LogEntry, TargetObject


def kind_of(kind: str) -> ObjectKind:
    return "user" if kind == "user" else "group"


def dump(obj: DirectoryObject | None) -> str | None:
    """A record as the JSON text stored for it (``None`` stays ``None``)."""
    return None if obj is None else encode(obj).decode()


def load(kind: str, data: str | None) -> DirectoryObject | None:
    return None if data is None else decode(kind_of(kind), data)


def logins(obj: DirectoryObject) -> tuple[str | None, str | None]:
    """The folded username and email a user signs in with (``None`` for a group)."""
    if isinstance(obj, User):
        return obj.username.casefold(), obj.email.casefold()
    return None, None


def hold_keys(keys: frozenset[Key]) -> str:
    """A hold's keys as stored: sorted, so an unchanged hold compares equal."""
    return json.dumps(sorted([list(k) for k in keys]))


def read_hold(target: str, keys: str, created_at: float, approved: object) -> Hold:
    held = frozenset((kind_of(k), i) for k, i in json.loads(keys))
    return Hold(target, held, float(created_at), bool(approved))


def factor_of(row: Sequence[Any]) -> FactorRecord:
    """A ``mfa_factors`` row (in :data:`daemon.store.sql.FACTORS` order) as a record."""
    user_id, factor_id, kind, name, data, created_at, used_at = row
    return FactorRecord(
        user_id, factor_id, kind, name, data, float(created_at),
        None if used_at is None else float(used_at),
    )  # fmt: skip


def factor_row(r: FactorRecord) -> tuple[Any, ...]:
    """The column values of :data:`daemon.store.sql.PUT_FACTOR`."""
    return (r.user_id, r.id, r.kind, r.name, r.data, r.created_at, r.used_at)


def log_row(e: LogEntry) -> tuple[Any, ...]:
    """The column values of a log entry, in :data:`daemon.store.sql.LOG_COLUMNS` order."""
    return (
        e.at, e.target, e.key[0], e.key[1], e.cycle, e.outcome, ",".join(e.changes),
        ",".join(e.attributes), e.method, e.path, e.status, e.error, e.actor,
    )  # fmt: skip


def log_entry_of(row: Sequence[Any]) -> LogEntry:
    """A row of :func:`daemon.store.sql.log_query` as an entry."""
    (entry_id, at, target, kind, object_id, cycle, outcome, changes, attributes, method, path,
     status, error, actor) = row  # fmt: skip
    return LogEntry(
        float(at), target, (kind_of(kind), object_id), outcome, cycle,
        tuple(changes.split(",")) if changes else (),
        tuple(attributes.split(",")) if attributes else (),
        method, path, None if status is None else int(status), error, actor, int(entry_id),
    )  # fmt: skip


def decision_of(row: Sequence[Any]) -> Decision:
    """A row of :data:`daemon.store.sql.DECISIONS` as a decision."""
    kind, object_id, decision, actor, decided_at, directory_hash, applied = row
    return Decision(
        (kind_of(kind), object_id), decision, actor, float(decided_at), directory_hash,
        bool(applied),
    )  # fmt: skip


def log_where(
    target: str | None, key: Key | None, before: int | None
) -> tuple[list[str], list[Any]]:
    """The :data:`daemon.store.sql.LOG_FILTERS` a page query uses, and their values."""
    filters: list[str] = []
    values: list[Any] = []
    for name, value in (
        ("target", target),
        ("kind", None if key is None else key[0]),
        ("object_id", None if key is None else key[1]),
        ("before", before),
    ):
        if value is not None:
            filters.append(name)
            values.append(value)
    return filters, values


def target_object_of(row: Sequence[Any]) -> TargetObject:
    """A row of :data:`daemon.store.sql.TARGET_OBJECT`."""
    (kind, object_id, remote_id, dh, desired, written, attempts, active, dirty, last_error,
     nxt, updated_at) = row  # fmt: skip
    due = DueRow(
        (kind_of(kind), object_id), remote_id, dh, load(kind, desired), load(kind, written),
        int(attempts),
    )  # fmt: skip
    return TargetObject(
        due, None if active is None else bool(active), bool(dirty), last_error, float(nxt),
        float(updated_at),
    )  # fmt: skip


def msgspec_group(data: str) -> Group:
    """A stored group record."""
    group = decode("group", data)
    assert isinstance(group, Group)
    return group
