"""The canonical directory model every source normalises to.

Records are immutable ``msgspec`` structs: cheap to build by the hundred
thousand, cheap to encode, and their JSON encoding is deterministic, which is
what the content hashes in :func:`content_hash` rely on. They hold only
text, enums and tuples of text, so they can never be part of a reference
cycle: they are built with ``gc=False``, and the cyclic collector never
walks the hundreds of thousands a snapshot holds.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import msgspec


class AccountState(enum.StrEnum):
    """Whether an account may be used.

    ``unassigned`` never comes from a directory. The assignment scope of a
    target produces it for a user the target knows but who is no longer in
    any group bound to that target (implicit deny).
    """

    ACTIVE = "active"
    SUSPENDED = "suspended"
    UNASSIGNED = "unassigned"


class User(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One person in the directory.

    ``id`` is the directory's stable object id (``entryUUID``, ``objectGUID``,
    a JumpCloud id, or the id field of a directory file). It never changes on
    rename and becomes the SCIM ``externalId``.
    """

    id: str
    username: str
    email: str
    given_name: str = ""
    family_name: str = ""
    display_name: str | None = None
    title: str | None = None
    phone: str | None = None
    employee_id: str | None = None
    department: str | None = None
    cost_center: str | None = None
    company: str | None = None
    manager: str | None = None
    division: str | None = None
    state: AccountState = AccountState.ACTIVE

    @property
    def active(self) -> bool:
        return self.state is AccountState.ACTIVE


class Group(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A directory group: a name and the ids of its (flattened) user members.

    ``members`` is kept sorted so that equal groups encode, and hash, equally.
    """

    id: str
    name: str
    members: tuple[str, ...] = ()


ObjectKind: TypeAlias = Literal["user", "group"]
DirectoryObject: TypeAlias = User | Group

#: Field names of :class:`User`, in declaration order.
USER_FIELDS: tuple[str, ...] = User.__struct_fields__


def make_group(id: str, name: str, members: Iterable[str]) -> Group:
    """Build a :class:`Group` with its members de-duplicated and sorted."""
    return Group(id=id, name=name, members=tuple(sorted(set(members))))


_encoder = msgspec.json.Encoder()


def encode(obj: DirectoryObject) -> bytes:
    """The canonical JSON encoding of a record (what the store keeps)."""
    return _encoder.encode(obj)


_user_decoder = msgspec.json.Decoder(User)
_group_decoder = msgspec.json.Decoder(Group)


def decode(kind: ObjectKind, data: bytes | str) -> DirectoryObject:
    """Inverse of :func:`encode`."""
    if kind == "user":
        return _user_decoder.decode(data)
    return _group_decoder.decode(data)


def content_hash(obj: DirectoryObject) -> str:
    """A short, stable hash of a record's whole content."""
    return hashlib.blake2b(_encoder.encode(obj), digest_size=12).hexdigest()


def kind_of(obj: DirectoryObject) -> ObjectKind:
    return "user" if isinstance(obj, User) else "group"


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """A directory record that could not be used, and why.

    ``where`` names the place (a file, a DN, an API URL), ``record`` the
    record's id or, when it has none, its index; ``field`` the attribute at
    fault. ``object_id`` is the directory id of the object the record
    describes, when the source could read it (for an LDAP entry ``record`` is
    the DN). The engine uses it to tell "this known object is invalid now"
    from "this object is gone" (see :mod:`daemon.screening`).
    """

    where: str
    record: str
    field: str
    reason: str
    kind: ObjectKind = "user"
    object_id: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.kind} {self.record}: field {self.field!r}: {self.reason}"

    @property
    def key(self) -> tuple[ObjectKind, str] | None:
        """``(kind, object_id)``, or ``None`` when the source could not read the id."""
        return None if self.object_id is None else (self.kind, self.object_id)

    def log_fields(self) -> dict[str, str]:
        """Key-value pairs for a structured log line."""
        fields = {
            "where": self.where,
            "kind": self.kind,
            "record": self.record,
            "field": self.field,
            "reason": self.reason,
        }
        if self.object_id is not None and self.object_id != self.record:
            fields["object_id"] = self.object_id
        return fields


@dataclass(slots=True)
class Snapshot:
    """The whole directory at one instant, already normalised.

    ``version`` identifies the content the source read (a file digest, an LDAP
    ``contextCSN``, ...): two snapshots with the same version are equal.
    ``skipped`` lists the records the source reported and left out.

    ``base`` and ``changed`` let a source that knows what it re-read say so:
    this snapshot equals the one whose version is ``base`` except for the
    objects keyed ``(kind, id)`` in ``changed`` (which may have been added,
    modified or removed). ``changed is None`` means "compare everything".
    """

    users: dict[str, User]
    groups: dict[str, Group]
    version: str = ""
    skipped: list[SkippedRecord] = field(default_factory=list)
    base: str | None = None
    changed: frozenset[tuple[ObjectKind, str]] | None = None

    @classmethod
    def of(
        cls,
        users: Iterable[User] = (),
        groups: Iterable[Group] = (),
        version: str = "",
    ) -> Snapshot:
        return cls(
            users={u.id: u for u in users},
            groups={g.id: g for g in groups},
            version=version,
        )

    def hashes(self) -> dict[tuple[ObjectKind, str], str]:
        """Content hash of every object, keyed by ``(kind, id)``."""
        out: dict[tuple[ObjectKind, str], str] = {}
        for uid, user in self.users.items():
            out[("user", uid)] = content_hash(user)
        for gid, group in self.groups.items():
            out[("group", gid)] = content_hash(group)
        return out

    def get(self, kind: ObjectKind, object_id: str) -> DirectoryObject | None:
        table: Mapping[str, DirectoryObject] = self.users if kind == "user" else self.groups
        return table.get(object_id)


def fold(value: str) -> str:
    """``value.casefold()``, the same object when folding changes nothing (saves the copy)."""
    folded = value.casefold()
    return value if folded == value else folded


class Logins:
    """Who holds each username and email (folded: logins are unique ignoring case), by user id.

    Built from users that share no login. ``add`` and ``remove`` follow
    changed records, so a reader or a cycle can screen the changed users
    alone against the rest (:meth:`clash`) instead of folding every user again.
    The file source keeps one for its last clean read, the engine one for the
    committed snapshot.
    """

    __slots__ = ("emails", "usernames")

    def __init__(self, users: Iterable[User] = ()) -> None:
        self.usernames: dict[str, str] = {}
        self.emails: dict[str, str] = {}
        for user in users:
            self.add(user)

    def add(self, user: User) -> None:
        self.usernames[fold(user.username)] = user.id
        self.emails[fold(user.email)] = user.id

    def remove(self, user: User) -> None:
        for table, value in ((self.usernames, user.username), (self.emails, user.email)):
            folded = fold(value)
            if table.get(folded) == user.id:
                del table[folded]

    def clash(self, users: Iterable[User]) -> bool:
        """Whether any of ``users`` (the changed ones) would share a login with another user."""
        seen: dict[tuple[str, str], str] = {}
        for user in users:
            for name, table, value in (
                ("username", self.usernames, user.username),
                ("email", self.emails, user.email),
            ):
                folded = fold(value)
                if table.get(folded, user.id) != user.id:
                    return True
                if seen.setdefault((name, folded), user.id) != user.id:
                    return True
        return False
