"""Compare two views of the directory and produce typed changes.

The same per-object functions serve both uses: the global diff of one
snapshot against the last committed one, and a target's delta from what it
last wrote to what it should now hold. Order is deterministic: users before
the groups that need them, membership after both, removals last.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from daemon.changes import (
    Change,
    GroupAdded,
    GroupRemoved,
    GroupRenamed,
    MembersAdded,
    MembersRemoved,
    UserAdded,
    UserChanged,
    UserReactivated,
    UserRemoved,
    UserSuspended,
)
from daemon.model import (
    USER_FIELDS,
    DirectoryObject,
    Group,
    Snapshot,
    User,
    make_group,
)

_ATTRIBUTES = tuple(f for f in USER_FIELDS if f not in ("id", "state"))

# Delivery phases, see the module docstring.
_PHASE = {
    UserAdded: 0,
    UserChanged: 0,
    UserReactivated: 0,
    UserSuspended: 0,
    GroupAdded: 1,
    GroupRenamed: 1,
    MembersAdded: 2,
    MembersRemoved: 2,
    GroupRemoved: 3,
    UserRemoved: 4,
}


def changed_fields(before: User, after: User) -> tuple[str, ...]:
    """Names of the attributes (not the state) that differ."""
    return tuple(f for f in _ATTRIBUTES if getattr(before, f) != getattr(after, f))


def diff_user(before: User | None, after: User | None) -> list[Change]:
    if before is None:
        return [] if after is None else [UserAdded(after)]
    if after is None:
        return [UserRemoved(before)]
    out: list[Change] = []
    fields = changed_fields(before, after)
    if fields:
        out.append(UserChanged(before, after, fields))
    if before.state != after.state:
        out.append(UserReactivated(after) if after.active else UserSuspended(after))
    return out


def diff_group(before: Group | None, after: Group | None) -> list[Change]:
    if before is None:
        return [] if after is None else [GroupAdded(after)]
    if after is None:
        return [GroupRemoved(before)]
    out: list[Change] = []
    if before.name != after.name:
        out.append(GroupRenamed(after.id, before.name, after.name))
    old, new = set(before.members), set(after.members)
    if added := tuple(sorted(new - old)):
        out.append(MembersAdded(after.id, added))
    if removed := tuple(sorted(old - new)):
        out.append(MembersRemoved(after.id, removed))
    return out


def diff_object(before: DirectoryObject | None, after: DirectoryObject | None) -> list[Change]:
    """Changes that turn ``before`` into ``after`` (either may be ``None``)."""
    if isinstance(before, User) or isinstance(after, User):
        assert before is None or isinstance(before, User)
        assert after is None or isinstance(after, User)
        return diff_user(before, after)
    assert before is None or isinstance(before, Group)
    assert after is None or isinstance(after, Group)
    return diff_group(before, after)


def delivery_order(changes: Iterable[Change]) -> list[Change]:
    """Sort changes into delivery phases, stable within a phase."""
    return sorted(changes, key=lambda c: _PHASE[type(c)])


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """Every change from ``old`` to ``new``, in delivery order.

    Unchanged objects are skipped by comparing records (equal records are
    equal in content, so this is the content-hash comparison without the
    hashing).
    """
    out: list[Change] = []
    # Find what differs first and sort only that: most objects are unchanged.
    users = [uid for uid, u in new.users.items() if old.users.get(uid) != u]
    users += [uid for uid in old.users if uid not in new.users]
    for uid in sorted(users):
        out.extend(diff_user(old.users.get(uid), new.users.get(uid)))
    groups = [gid for gid, g in new.groups.items() if old.groups.get(gid) != g]
    groups += [gid for gid in old.groups if gid not in new.groups]
    for gid in sorted(groups):
        out.extend(diff_group(old.groups.get(gid), new.groups.get(gid)))
    return delivery_order(out)


def apply(snapshot: Snapshot, changes: Iterable[Change]) -> Snapshot:
    """Return a new snapshot with ``changes`` applied (the inverse of :func:`diff`)."""
    users = dict(snapshot.users)
    groups = dict(snapshot.groups)
    for change in changes:
        match change:
            case UserAdded(user=u) | UserReactivated(user=u) | UserSuspended(user=u):
                users[u.id] = u
            case UserChanged(after=u, fields=fields):
                current = users[u.id]
                users[u.id] = _with_fields(current, u, fields)
            case UserRemoved(user=u):
                del users[u.id]
            case GroupAdded(group=g):
                groups[g.id] = g
            case GroupRenamed(group_id=gid, new_name=name):
                g = groups[gid]
                groups[gid] = make_group(g.id, name, g.members)
            case MembersAdded(group_id=gid, members=m):
                g = groups[gid]
                groups[gid] = make_group(g.id, g.name, (*g.members, *m))
            case MembersRemoved(group_id=gid, members=m):
                g = groups[gid]
                gone = set(m)
                groups[gid] = make_group(g.id, g.name, (x for x in g.members if x not in gone))
            case GroupRemoved(group=g):
                del groups[g.id]
    return Snapshot(users=users, groups=groups, version=snapshot.version)


def _with_fields(current: User, source: User, fields: tuple[str, ...]) -> User:
    return msgspec.structs.replace(current, **{f: getattr(source, f) for f in fields})
