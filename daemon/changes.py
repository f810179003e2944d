"""Typed changes between two views of the directory.

A change says what happened to one object. :mod:`daemon.diff` produces them,
targets receive them grouped per object in a :class:`daemon.targets.base.Delta`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from daemon.model import Group, ObjectKind, User


@dataclass(frozen=True, slots=True)
class UserAdded:
    """A user appeared (in the directory, or in a target's assignment scope)."""

    name: ClassVar[str] = "user_added"
    user: User

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("user", self.user.id)


@dataclass(frozen=True, slots=True)
class UserChanged:
    """Attributes other than the account state changed; ``fields`` names them."""

    name: ClassVar[str] = "user_changed"
    before: User
    after: User
    fields: tuple[str, ...]

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("user", self.after.id)


@dataclass(frozen=True, slots=True)
class UserSuspended:
    """The account may no longer be used.

    ``user.state`` says why: ``suspended`` in the directory, or ``unassigned``
    when the user left every group bound to the target.
    """

    name: ClassVar[str] = "user_suspended"
    user: User

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("user", self.user.id)


@dataclass(frozen=True, slots=True)
class UserReactivated:
    """A suspended or unassigned account is active again."""

    name: ClassVar[str] = "user_reactivated"
    user: User

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("user", self.user.id)


@dataclass(frozen=True, slots=True)
class UserRemoved:
    """The user is gone from the directory; ``user`` is the last known record."""

    name: ClassVar[str] = "user_removed"
    user: User

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("user", self.user.id)


@dataclass(frozen=True, slots=True)
class GroupAdded:
    """A group appeared; ``group.members`` are its initial members."""

    name: ClassVar[str] = "group_added"
    group: Group

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("group", self.group.id)


@dataclass(frozen=True, slots=True)
class GroupRenamed:
    name: ClassVar[str] = "group_renamed"
    group_id: str
    old_name: str
    new_name: str

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("group", self.group_id)


@dataclass(frozen=True, slots=True)
class GroupRemoved:
    """The group is gone; ``group`` is the last known record."""

    name: ClassVar[str] = "group_removed"
    group: Group

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("group", self.group.id)


@dataclass(frozen=True, slots=True)
class MembersAdded:
    name: ClassVar[str] = "members_added"
    group_id: str
    members: tuple[str, ...]

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("group", self.group_id)


@dataclass(frozen=True, slots=True)
class MembersRemoved:
    name: ClassVar[str] = "members_removed"
    group_id: str
    members: tuple[str, ...]

    @property
    def key(self) -> tuple[ObjectKind, str]:
        return ("group", self.group_id)


Change: TypeAlias = (
    UserAdded
    | UserChanged
    | UserSuspended
    | UserReactivated
    | UserRemoved
    | GroupAdded
    | GroupRenamed
    | GroupRemoved
    | MembersAdded
    | MembersRemoved
)

#: Every change kind, in the order a cycle delivers them.
CHANGE_KINDS: tuple[str, ...] = (
    UserAdded.name,
    UserChanged.name,
    UserReactivated.name,
    UserSuspended.name,
    GroupAdded.name,
    GroupRenamed.name,
    MembersAdded.name,
    MembersRemoved.name,
    GroupRemoved.name,
    UserRemoved.name,
)


def describe(change: Change) -> str:
    """One human line for a change (used by ``plan`` and the log target)."""
    match change:
        case UserAdded(user=u):
            return f"add user {u.username} <{u.email}> ({u.state})"
        case UserChanged(after=u, fields=f):
            return f"update user {u.username}: {', '.join(f)}"
        case UserSuspended(user=u):
            why = "left assignment scope" if u.state == "unassigned" else "suspended"
            return f"deactivate user {u.username} ({why})"
        case UserReactivated(user=u):
            return f"reactivate user {u.username}"
        case UserRemoved(user=u):
            return f"remove user {u.username}"
        case GroupAdded(group=g):
            return f"add group {g.name} ({len(g.members)} members)"
        case GroupRenamed(old_name=old, new_name=new):
            return f"rename group {old} -> {new}"
        case MembersAdded(group_id=g, members=m):
            return f"add {len(m)} member(s) to group {g}"
        case MembersRemoved(group_id=g, members=m):
            return f"remove {len(m)} member(s) from group {g}"
        case GroupRemoved(group=g):
            return f"remove group {g.name}"
