"""How records, keys and holds become column values and back: the same on every backend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from daemon.model import DirectoryObject, ObjectKind, User, decode, encode
from daemon.store import FactorRecord, Hold, Key


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
