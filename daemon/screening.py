"""Screening a fresh snapshot against the committed one, before anything is compared.

Two rules hold for every source, so they live in the core:

- **Unique logins.** No two users share a username or an email, ignoring
  case. Applications key accounts on them; two directory records with one
  email would become one account that flips between them. Every record of
  a conflict is left out and reported, naming the others.
- **Invalid now is not gone.** A record the source skipped (a typo in an
  email, a conflict above) for an object the committed snapshot holds means
  "unknown now", not "removed". The object keeps its last good committed
  record, and its group memberships stay as they were committed, so
  nothing downstream changes for it until the record is valid again or
  really disappears from the directory. Such an object is *stale*.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.model import DirectoryObject, Group, SkippedRecord, Snapshot, User, make_group
from daemon.store import Key, Store

#: The ``meta`` key under which the engine keeps the stale objects (for ``status``).
STALE_META = "stale_objects"

Loader = Callable[[list[Key]], Awaitable[dict[Key, DirectoryObject]]]


@dataclass(frozen=True, slots=True)
class StaleObject:
    """A known object whose record is unusable now; it keeps its last good state."""

    key: Key
    problems: tuple[SkippedRecord, ...]

    @property
    def name(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"

    def as_dict(self, since: float) -> dict[str, Any]:
        return {
            "object": self.name,
            "since": since,
            "problems": [str(p) for p in self.problems],
        }


@dataclass(frozen=True, slots=True)
class Screened:
    """The snapshot to compare, and the objects kept at their last good state."""

    snapshot: Snapshot
    stale: list[StaleObject]


def duplicate_logins(users: Collection[User]) -> list[tuple[str, list[str]]]:
    """``(field, user ids)`` for every username and email shared, ignoring case."""
    # The common case, no conflict at all, costs two set sizes (one at a time).
    n = len(users)
    if len({u.username.casefold() for u in users}) == n and (
        len({u.email.casefold() for u in users}) == n
    ):
        return []
    out: list[tuple[str, list[str]]] = []
    by_username: dict[str, str] = {}
    by_email: dict[str, str] = {}
    shared: dict[tuple[str, str], list[str]] = {}
    for user in users:
        for field, table, value in (
            ("username", by_username, user.username),
            ("email", by_email, user.email),
        ):
            folded = value.casefold()
            first = table.setdefault(folded, user.id)
            if first != user.id:
                shared.setdefault((field, folded), [first]).append(user.id)
    for (field, _), ids in shared.items():
        out.append((field, ids))
    return out


async def screen(snapshot: Snapshot, known: Collection[Key], load: Loader, where: str) -> Screened:
    """Apply both rules to ``snapshot``; ``known`` are the committed keys, ``load`` their records.

    The source's snapshot is never modified (a source may hand out the same
    one again); a new one is returned when anything had to change.
    """
    problems: dict[Key, list[SkippedRecord]] = {}
    for skipped in snapshot.skipped:
        gone = skipped.key
        if gone is not None and gone in known and snapshot.get(*gone) is None:
            problems.setdefault(gone, []).append(skipped)
    conflicts = duplicate_logins(snapshot.users.values())
    if not problems and not conflicts:
        return Screened(snapshot, [])

    users = dict(snapshot.users)
    groups = dict(snapshot.groups)
    skipped_out = list(snapshot.skipped)
    restored: set[Key] = set()
    left_out: set[str] = set()

    async def restore(keys: list[Key]) -> None:
        records = await load([k for k in keys if k not in restored])
        for key in keys:
            obj = records.get(key)
            if isinstance(obj, User):
                users[key[1]] = obj
            elif isinstance(obj, Group):
                groups[key[1]] = obj
            else:
                # Not in the committed records after all: simply left out.
                problems.pop(key, None)
                if key[0] == "user" and users.pop(key[1], None) is not None:
                    left_out.add(key[1])
                continue
            restored.add(key)

    await restore(list(problems))
    while conflicts:
        again: list[Key] = []
        before = dict(users)  # the records as they conflict, for the messages
        for field, ids in conflicts:
            if all(("user", uid) in restored for uid in ids):
                continue  # committed like this already; nothing changes downstream
            for uid in ids:
                key: Key = ("user", uid)
                if key in restored:
                    continue
                others = [before[o] for o in ids if o != uid]
                reason = _conflict(field, before[uid], others)
                record = SkippedRecord(where, uid, field, reason, "user", uid)
                skipped_out.append(record)
                if key in known:
                    problems.setdefault(key, []).append(record)
                    again.append(key)
                else:
                    users.pop(uid, None)
                    left_out.add(uid)
        if not again:
            break
        await restore(again)
        conflicts = duplicate_logins(users.values())

    stale_users = {k[1] for k in restored if k[0] == "user"}
    if stale_users or left_out or any(k[0] == "group" for k in restored):
        await _keep_memberships(groups, users, stale_users, left_out, restored, known, load)
    out = Snapshot(users=users, groups=groups, version=snapshot.version, skipped=skipped_out)
    stale = [StaleObject(k, tuple(problems[k])) for k in sorted(restored) if k in problems]
    return Screened(out, stale)


async def _keep_memberships(
    groups: dict[str, Group],
    users: Mapping[str, User],
    stale_users: set[str],
    left_out: set[str],
    restored: set[Key],
    known: Collection[Key],
    load: Loader,
) -> None:
    """Stale users get their committed memberships back; left-out users leave every group."""
    committed: dict[Key, DirectoryObject] = {}
    if stale_users:
        committed = await load(
            [("group", g) for g in groups if ("group", g) in known and ("group", g) not in restored]
        )
    for gid, group in list(groups.items()):
        members = set(group.members)
        if ("group", gid) in restored:
            # A stale group keeps its committed members, except users really gone.
            kept = {m for m in members if m in users}
        else:
            old = committed.get(("group", gid))
            had = stale_users.intersection(old.members) if isinstance(old, Group) else set()
            kept = (members - stale_users - left_out) | had
        if kept != members:
            groups[gid] = make_group(gid, group.name, kept)


def _conflict(field: str, user: User, others: list[User]) -> str:
    named = " and ".join(f"user {o.id!r} (username {o.username!r})" for o in others)
    return (
        f"user {user.id!r} (username {user.username!r}) has the same {field} as {named}, "
        "ignoring case; neither is provisioned from this record until one of them changes"
    )


def stale_doc(stale: list[StaleObject], previous: list[dict[str, Any]], now: float) -> str:
    """The JSON kept under :data:`STALE_META`; ``since`` survives from ``previous``."""
    since = {str(p.get("object")): float(p.get("since") or now) for p in previous}
    return json.dumps([s.as_dict(since.get(s.name, now)) for s in stale])


async def stale_objects(store: Store) -> list[dict[str, Any]]:
    """The stale objects the last planning cycle recorded (for ``status`` and the API)."""
    raw = await store.get_meta(STALE_META)
    if not raw:
        return []
    try:
        doc = json.loads(raw)
    except ValueError:
        return []
    return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []


__all__ = [
    "STALE_META",
    "Screened",
    "StaleObject",
    "duplicate_logins",
    "screen",
    "stale_doc",
    "stale_objects",
]
