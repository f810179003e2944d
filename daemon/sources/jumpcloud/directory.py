"""What the jumpcloud source keeps between reads, and a re-read merged into it.

A re-read of single users and groups (the ones the events named) patches the
last snapshot: a user who came or went also joins or leaves the groups that
list them and is linked to or dropped as their reports' manager, so the
snapshot stays what a full read would give, without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import structlog

from daemon.model import ObjectKind, SkippedRecord, Snapshot, User, make_group
from daemon.sources.jumpcloud.records import member_ids, text, user_from_record

log = structlog.get_logger(__name__)

Key = tuple[ObjectKind, str]


class Missing:
    """What the API answered for an object that is not there (404)."""


MISSING = Missing()


@dataclass
class Directory:
    """The last snapshot, and what a re-read of single objects needs beside it."""

    snapshot: Snapshot
    #: User id -> the manager id JumpCloud holds (the snapshot drops unknown ones).
    managers: dict[str, str]
    #: Group id -> the user ids JumpCloud lists as members (the snapshot keeps known ones).
    members: dict[str, frozenset[str]]
    #: Skipped records with an object id, by key; ``loose``: those without one.
    skipped: dict[Key, SkippedRecord]
    loose: list[SkippedRecord]
    #: Wall-clock time the full read this snapshot descends from started.
    read_at: float


@dataclass
class Pending:
    """What the events said changed that no fetch has re-read yet (bounded)."""

    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    everything: bool = False

    def add(self, users: frozenset[str], groups: frozenset[str], limit: int) -> None:
        if self.everything:
            return
        self.users |= users
        self.groups |= groups
        if len(self.users) + len(self.groups) > limit:
            self.flood()

    def flood(self) -> None:
        self.users, self.groups, self.everything = set(), set(), True

    def take(self) -> Pending:
        taken = Pending(self.users, self.groups, self.everything)
        self.users, self.groups, self.everything = set(), set(), False
        return taken

    def put_back(self, taken: Pending, limit: int) -> None:
        if taken.everything:
            self.flood()
        else:
            self.add(frozenset(taken.users), frozenset(taken.groups), limit)

    def __bool__(self) -> bool:
        return self.everything or bool(self.users or self.groups)


def patch(
    old: Directory,
    users_read: Mapping[str, object],
    groups_read: Mapping[str, tuple[object, list[object] | Missing]],
    users_url: str,
    groups_url: str,
) -> tuple[Directory, frozenset[Key]]:
    """``old`` with these records read again, and the keys of the objects that moved.

    ``users_read`` maps a user id to its v1 record or :data:`MISSING`;
    ``groups_read`` a group id to its v2 record and member list (either may be
    :data:`MISSING`). ``*_url`` name the places in skipped records and logs.
    When nothing moved, the directory returned holds ``old.snapshot`` itself.
    """
    base = old.snapshot
    users = dict(base.users)
    groups = dict(base.groups)
    managers = dict(old.managers)
    members = dict(old.members)
    skipped = dict(old.skipped)
    touched: set[Key] = set()
    for user_id in users_read:
        touched.add(("user", user_id))
        skipped.pop(("user", user_id), None)
        users.pop(user_id, None)
        managers.pop(user_id, None)
        where = f"{users_url}/{user_id}"
        record = users_read[user_id]
        if record is MISSING:
            if user_id in base.users:
                log.info("jumpcloud user is gone (404); removed", user=user_id, where=where)
            else:
                log.warning(
                    "jumpcloud event named a user that cannot be read (404)",
                    user=user_id,
                    where=where,
                )
            continue
        user = user_from_record(record, 0, where)
        if isinstance(user, User) and user.id != user_id:
            user = SkippedRecord(where, user_id, "_id", f"is {user.id[:64]!r}", "user", user_id)
        if isinstance(user, SkippedRecord):
            skipped[("user", user_id)] = dataclasses.replace(user, object_id=user_id)
            continue
        users[user_id] = user
        if user.manager:
            managers[user_id] = user.manager
    came = {u for u in users_read if u in users and u not in base.users}
    went = {u for u in users_read if u not in users and u in base.users}
    # Managers: a re-read user's own, and everyone whose manager came or went.
    moved = came | went
    check = {u for u in users_read if u in users}
    if moved:
        check |= {u for u, m in managers.items() if m in moved and u in users}
    for user_id in check:
        manager = managers.get(user_id)
        pointed = manager if manager in users else None
        user = users[user_id]
        if user.manager != pointed:
            users[user_id] = msgspec.structs.replace(user, manager=pointed)
            touched.add(("user", user_id))
    for group_id in groups_read:
        touched.add(("group", group_id))
        skipped.pop(("group", group_id), None)
        groups.pop(group_id, None)
        members.pop(group_id, None)
        where = f"{groups_url}/{group_id}"
        record, items = groups_read[group_id]
        if record is MISSING or isinstance(items, Missing):
            if group_id in base.groups:
                log.info("jumpcloud group is gone (404); removed", group=group_id, where=where)
            else:
                log.warning(
                    "jumpcloud event named a group that cannot be read (404)",
                    group=group_id,
                    where=where,
                )
            continue
        name = text(record, "name") if isinstance(record, dict) else None
        if name is None:
            skipped[("group", group_id)] = SkippedRecord(
                where, group_id, "name", "missing", "group", group_id
            )
            continue
        raw = frozenset(member_ids(items))
        members[group_id] = raw
        groups[group_id] = make_group(group_id, name, (m for m in raw if m in users))
    if moved:
        # A user who came or went joins or leaves every group that lists them.
        for group_id, raw in members.items():
            if group_id in groups and ("group", group_id) not in touched and raw & moved:
                group = groups[group_id]
                listed = (m for m in raw if m in users)
                groups[group_id] = make_group(group_id, group.name, listed)
                touched.add(("group", group_id))
    after = Snapshot(users=users, groups=groups)
    changed = frozenset(k for k in touched if base.get(*k) != after.get(*k))
    after = Snapshot(users=users, groups=groups)
    changed = frozenset(k for k in touched if base.get(*k) != after.get(*k))
    if changed:
        after.skipped = [*old.loose, *skipped.values()]
    else:
        after = base  # re-read, and nothing moved (the events' change was undone)
    return Directory(after, managers, members, skipped, old.loose, old.read_at), changed
