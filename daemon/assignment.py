"""Assignment scope: which directory objects a target should hold, and in what state.

Users are implicitly denied. A target holds the users who are members of at
least one group bound to it; a user it already holds who leaves every bound
group stays in its view as ``unassigned`` (deactivated), and a user removed
from the directory leaves the view (removed). Bound groups are held with
their members filtered to the target's *active* users: a suspended or
unassigned user leaves the target's groups, whether the suspension came
before the first sync (the user is then never created) or later (the user
is deactivated and taken out of the groups, and put back when active again).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import msgspec

from daemon.model import (
    AccountState,
    DirectoryObject,
    Group,
    Snapshot,
    User,
    content_hash,
)
from daemon.store import DesiredRow, Key, TargetIndex


@dataclass(frozen=True, slots=True)
class Assignment:
    """The groups bound to one target, by directory group id or name."""

    target: str
    groups: tuple[str, ...]

    def bound_groups(self, snapshot: Snapshot) -> list[Group]:
        wanted = set(self.groups)
        return [g for g in snapshot.groups.values() if g.id in wanted or g.name in wanted]

    def unknown(self, snapshot: Snapshot) -> list[str]:
        """Configured group references that match no directory group."""
        names = {g.name for g in snapshot.groups.values()}
        return [g for g in self.groups if g not in snapshot.groups and g not in names]


@dataclass(frozen=True, slots=True)
class ScopedPlan:
    """What changed in one target's view since its recorded desired state."""

    desired: list[DesiredRow]
    released: list[Key]
    # Users whose desired state goes from active to deactivated or removed.
    deactivations: list[Key]
    active_before: int
    #: The keys the plan looked at (:func:`plan_changed`), planned or found as
    #: recorded; ``None``: every key (:func:`plan`). What the guard held of the
    #: other keys is still held: their inputs did not change.
    replanned: frozenset[Key] | None = None


def view(
    snapshot: Snapshot,
    hashes: Mapping[Key, str],
    assignment: Assignment,
    index: TargetIndex,
) -> dict[Key, tuple[str, DirectoryObject]]:
    """The target's desired view: ``key -> (hash, record)``.

    ``hashes`` are the snapshot's content hashes (reused for records the view
    does not alter).
    """
    bound = assignment.bound_groups(snapshot)
    in_scope: set[str] = set()
    for g in bound:
        in_scope.update(g.members)
    out: dict[Key, tuple[str, DirectoryObject]] = {}
    #: The users the target holds active: the only members its groups list.
    held: set[str] = set()
    for uid, user in snapshot.users.items():
        key: Key = ("user", uid)
        known = index.hashes.get(key) is not None
        if uid in in_scope:
            # A suspended user nobody provisioned yet is not created at all.
            if user.active or known:
                out[key] = (hashes[key], user)
                if user.active:
                    held.add(uid)
        elif known:
            gone = msgspec.structs.replace(user, state=AccountState.UNASSIGNED)
            out[key] = (content_hash(gone), gone)
    for g in bound:
        members = tuple(m for m in g.members if m in held)
        group = g if members == g.members else msgspec.structs.replace(g, members=members)
        gkey: Key = ("group", g.id)
        out[gkey] = (hashes[gkey] if group is g else content_hash(group), group)
    return out


def plan(
    snapshot: Snapshot,
    hashes: Mapping[Key, str],
    assignment: Assignment,
    index: TargetIndex,
) -> ScopedPlan:
    """Compare the target's new view with its recorded desired state."""
    wanted = view(snapshot, hashes, assignment, index)
    desired: list[DesiredRow] = []
    deactivations: list[Key] = []
    for key, (h, obj) in wanted.items():
        if index.hashes.get(key, "") != h:
            active = obj.active if key[0] == "user" else None  # type: ignore[union-attr]
            desired.append(DesiredRow(key, h, obj, active))
            if key[0] == "user" and not active and key[1] in index.active:
                deactivations.append(key)
    released: list[Key] = []
    for key, recorded in index.hashes.items():
        if key in wanted or recorded is None:
            continue
        if key[0] == "group" and key[1] in snapshot.groups:
            # Unbound, not deleted: stop managing it and leave it as it is.
            released.append(key)
            continue
        desired.append(DesiredRow(key, None, None, None))
        if key[0] == "user" and key[1] in index.active:
            deactivations.append(key)
    return ScopedPlan(desired, released, deactivations, len(index.active))


@dataclass(frozen=True, slots=True)
class MemberLosses:
    """The memberships a plan takes away from a target's groups (the guard's second measure).

    Counted against the target's recorded desired state. ``groups`` maps each
    group row that loses members to how many it loses (a deleted group loses
    all of them); ``deleted`` lists the groups removed from the directory.
    ``memberships`` is every recorded membership of the target and
    ``groups_before`` every recorded group: the denominators.
    """

    groups: dict[Key, int]
    deleted: list[Key]
    memberships: int
    groups_before: int

    @property
    def lost(self) -> int:
        return sum(self.groups.values())


def member_losses(
    desired: list[DesiredRow], recorded: Mapping[Key, Group]
) -> tuple[dict[Key, int], list[Key]]:
    """Per group row of ``desired``, the members it drops from its ``recorded`` state.

    Returns the groups that lose members (with how many) and the groups that
    are deleted. A group with no recorded state loses nothing.
    """
    losing: dict[Key, int] = {}
    deleted: list[Key] = []
    for row in desired:
        if row.key[0] != "group":
            continue
        old = recorded.get(row.key)
        if row.obj is None:
            deleted.append(row.key)
        if old is None:
            continue
        new = row.obj.members if isinstance(row.obj, Group) else ()
        lost = len(set(old.members).difference(new))
        if lost:
            losing[row.key] = lost
    return losing, deleted


def _contains(members: tuple[str, ...], uid: str) -> bool:
    """Whether the sorted ``members`` hold ``uid`` (a binary search)."""
    i = bisect.bisect_left(members, uid)
    return i < len(members) and members[i] == uid


def _bound(group: Group | None, wanted: set[str]) -> bool:
    return group is not None and (group.id in wanted or group.name in wanted)


def plan_changed(
    snapshot: Snapshot,
    hashes: Mapping[Key, str],
    assignment: Assignment,
    index: TargetIndex,
    changed: Collection[Key],
    before: Mapping[Key, DirectoryObject],
) -> ScopedPlan:
    """:func:`plan` for a snapshot that differs from the last planned one only in ``changed``.

    ``before`` holds the committed records of the changed keys that existed.
    The work is proportional to the change: the users whose record changed,
    the users who joined or left a bound group (or whose group became bound
    or unbound), and the bound groups that changed or that contain a user
    whose listing (held and active) flipped. The result is what :func:`plan` would give
    (``tests/core/test_proportional.py`` checks it on random directories).
    """
    wanted = set(assignment.groups)
    bound = assignment.bound_groups(snapshot)
    users: set[str] = {k[1] for k in changed if k[0] == "user"}
    groups: set[str] = set()
    for ckey in changed:
        if ckey[0] != "group":
            continue
        old, new = before.get(ckey), snapshot.groups.get(ckey[1])
        assert old is None or isinstance(old, Group)
        was, now = _bound(old, wanted), _bound(new, wanted)
        if was or now:
            groups.add(ckey[1])
        old_members = set(old.members) if old is not None and was else set()
        new_members = set(new.members) if new is not None and now else set()
        users |= old_members ^ new_members
    out: dict[Key, tuple[str, DirectoryObject] | None] = {}
    for uid in users:
        key: Key = ("user", uid)
        user = snapshot.users.get(uid)
        known = index.hashes.get(key) is not None
        row: tuple[str, DirectoryObject] | None = None
        if user is not None:
            if any(_contains(g.members, uid) for g in bound):
                if user.active or known:
                    row = (hashes[key], user)
            elif known:
                gone = msgspec.structs.replace(user, state=AccountState.UNASSIGNED)
                row = (content_hash(gone), gone)
        out[key] = row
        # Listed in the target's groups now (held and active) and before: when that
        # flips, its bound groups' members change. (A user who joined or left a
        # group is there already: that group changed.)
        listed = row is not None and isinstance(row[1], User) and row[1].active
        old = before.get(key)
        was_listed = known and isinstance(old, User) and old.active
        if listed != was_listed:
            groups.update(g.id for g in bound if _contains(g.members, uid))
    for g in bound:
        if g.id not in groups:
            continue

        def held(uid: str) -> bool:
            """Whether member ``uid`` of a bound group is listed: held by the target, active."""
            key: Key = ("user", uid)
            if key in out:
                row = out[key]
                return row is not None and isinstance(row[1], User) and row[1].active
            user = snapshot.users.get(uid)
            return user is not None and user.active

        members = tuple(m for m in g.members if held(m))
        group = g if members == g.members else msgspec.structs.replace(g, members=members)
        gkey: Key = ("group", g.id)
        out[gkey] = (hashes[gkey] if group is g else content_hash(group), group)
    for gid in groups:
        out.setdefault(("group", gid), None)
    desired: list[DesiredRow] = []
    deactivations: list[Key] = []
    released: list[Key] = []
    for key, row in out.items():
        recorded = index.hashes.get(key)
        if row is not None:
            h, obj = row
            if (recorded or "") != h:
                active = obj.active if isinstance(obj, User) else None
                desired.append(DesiredRow(key, h, obj, active))
                if key[0] == "user" and not active and key[1] in index.active:
                    deactivations.append(key)
            continue
        if recorded is None:
            continue
        if key[0] == "group" and key[1] in snapshot.groups:
            released.append(key)  # unbound, not deleted
            continue
        desired.append(DesiredRow(key, None, None, None))
        if key[0] == "user" and key[1] in index.active:
            deactivations.append(key)
    return ScopedPlan(desired, released, deactivations, len(index.active), frozenset(out))
