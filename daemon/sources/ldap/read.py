"""From directory entries to canonical users and groups.

Entries are first turned into records that still point at each other by DN
(a manager, a group member); :func:`assemble` resolves those DNs to ids once
the whole directory is known. Keeping the records lets an incremental read
replace a few of them and assemble again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from daemon.model import AccountState, SkippedRecord, Snapshot, User, make_group
from daemon.sources.ldap.directory import Entry
from daemon.sources.ldap.presets import REQUIRED_FIELDS, UAC_ACCOUNTDISABLE
from daemon.sources.ldap.settings import Layout

_DN_SPACING = re.compile(r"\s*([,=+])\s*")
_SPACED = re.compile(r"\s[,=+]|[,=+]\s")


def dn_key(dn: str) -> str:
    """A comparison key for a DN: DNs are case-insensitive and spacing varies between servers."""
    key = dn.strip().casefold()
    # Most DNs have no space by a separator; substituting anyway costs a
    # template expansion per separator, for every member of every group.
    return _DN_SPACING.sub(r"\1", key) if _SPACED.search(key) else key


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A valid user entry; ``user.manager`` is still unresolved (see ``manager_dn``)."""

    dn: str
    user: User
    manager_dn: str | None
    member_of: tuple[str, ...]
    change: str | None


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A valid group entry; ``members`` are DN keys of users or of other groups."""

    dn: str
    id: str
    name: str
    members: tuple[str, ...]
    change: str | None


class _Bad(Exception):
    def __init__(self, attribute: str, reason: str) -> None:
        self.attribute = attribute
        self.reason = reason


def _object_id(entry: Entry, layout: Layout) -> str:
    attr = layout.fields["id"]
    if layout.id_encoding == "guid":
        raw = entry.raw(attr)
        if raw is None:
            raise _Bad(attr, "missing")
        if len(raw) != 16:
            raise _Bad(attr, f"is {len(raw)} bytes, a GUID has 16")
        # AD stores the first three GUID fields little-endian.
        return str(uuid.UUID(bytes_le=raw))
    value = _text(entry, attr)
    if value is None:
        raise _Bad(attr, "missing")
    return value


def _text(entry: Entry, attr: str) -> str | None:
    try:
        return entry.text(attr)
    except UnicodeDecodeError:
        raise _Bad(attr, "is not UTF-8 text") from None


def _suspended(entry: Entry, layout: Layout) -> bool:
    if layout.account_control:
        raw = _text(entry, "userAccountControl")
        if raw is not None:
            try:
                flags = int(raw)
            except ValueError:
                raise _Bad("userAccountControl", f"{raw!r} is not an integer") from None
            if flags & UAC_ACCOUNTDISABLE:
                return True
    attr = layout.suspended_attribute
    if attr:
        value = _text(entry, attr)
        if value is not None:
            return not layout.suspended_values or value.casefold() in layout.suspended_values
    return False


def user_record(entry: Entry, layout: Layout, where: str) -> UserRecord | SkippedRecord:
    """The entry as a user, or the reason it cannot be one."""
    try:
        values: dict[str, str | None] = {"id": _object_id(entry, layout)}
        for name, attr in layout.fields.items():
            if name != "id":
                values[name] = _text(entry, attr)
        for name in REQUIRED_FIELDS:
            if not values.get(name):
                raise _Bad(layout.fields[name], "missing")
        email = values.pop("email") or ""
        if "@" not in email.strip("@"):
            raise _Bad(layout.fields["email"], f"{email!r} is not an email address")
        suspended = _suspended(entry, layout)
        member_of: tuple[str, ...] = ()
        if layout.member_of_attribute:
            member_of = tuple(dn_key(v) for v in _texts(entry, layout.member_of_attribute))
        change = _text(entry, layout.change_attribute)
    except _Bad as bad:
        return SkippedRecord(where=where, record=entry.dn, field=bad.attribute, reason=bad.reason)
    manager_dn = values.pop("manager", None)
    user = User(
        id=values.pop("id") or "",
        username=values.pop("username") or "",
        email=email,
        given_name=values.pop("given_name", None) or "",
        family_name=values.pop("family_name", None) or "",
        state=AccountState.SUSPENDED if suspended else AccountState.ACTIVE,
        **values,
    )
    return UserRecord(entry.dn, user, manager_dn, member_of, change)


def _texts(entry: Entry, attr: str) -> list[str]:
    try:
        return entry.texts(attr)
    except UnicodeDecodeError:
        raise _Bad(attr, "is not UTF-8 text") from None


def group_record(entry: Entry, layout: Layout, where: str) -> GroupRecord | SkippedRecord:
    """The entry as a group, or the reason it cannot be one."""
    try:
        group_id = _object_id(entry, layout)
        name = _text(entry, layout.group_name_attribute)
        if name is None:
            raise _Bad(layout.group_name_attribute, "missing")
        members = {
            dn_key(v) for attr in layout.group_member_attributes for v in _texts(entry, attr)
        }
        change = _text(entry, layout.change_attribute)
    except _Bad as bad:
        return SkippedRecord(
            where=where, record=entry.dn, field=bad.attribute, reason=bad.reason, kind="group"
        )
    return GroupRecord(entry.dn, group_id, name, tuple(sorted(members)), change)


def assemble(
    users: Mapping[str, UserRecord],
    groups: Mapping[str, GroupRecord],
    skipped: Iterable[SkippedRecord],
    *,
    flatten: bool,
    where: str,
    id_attribute: str,
) -> Snapshot:
    """The snapshot: managers and members resolved from DN keys to ids.

    ``users`` and ``groups`` are keyed by :func:`dn_key`. Members that are
    neither known users nor (when ``flatten``) known groups are dropped; a
    group nested in itself is read once.
    """
    out = Snapshot(users={}, groups={}, skipped=list(skipped))
    user_ids: dict[str, str] = {}
    for key, rec in users.items():
        if rec.user.id in out.users:
            out.skipped.append(SkippedRecord(where, rec.dn, id_attribute, "duplicate id"))
            continue
        user_ids[key] = rec.user.id
        out.users[rec.user.id] = rec.user
    for rec in users.values():
        # ``is`` skips the loser of a duplicate id, whose manager must not win.
        if rec.manager_dn and out.users.get(rec.user.id) is rec.user:
            manager = user_ids.get(dn_key(rec.manager_dn))
            if manager is not None:
                out.users[rec.user.id] = msgspec.structs.replace(rec.user, manager=manager)

    via_member_of: dict[str, set[str]] = {}
    for key, rec in users.items():
        for group_key in rec.member_of:
            via_member_of.setdefault(group_key, set()).add(user_ids.get(key, ""))

    for key, grec in groups.items():
        if grec.id in out.groups:
            out.skipped.append(
                SkippedRecord(where, grec.dn, id_attribute, "duplicate id", kind="group")
            )
            continue
        members = _members(key, groups, user_ids, flatten)
        members |= via_member_of.get(key, set())
        members.discard("")
        out.groups[grec.id] = make_group(grec.id, grec.name, members)
    return out


def _members(
    root: str, groups: Mapping[str, GroupRecord], user_ids: Mapping[str, str], flatten: bool
) -> set[str]:
    found: set[str] = set()
    seen = {root}
    todo = [root]
    while todo:
        for member in groups[todo.pop()].members:
            if member in user_ids:
                found.add(user_ids[member])
            elif flatten and member in groups and member not in seen:
                seen.add(member)
                todo.append(member)
    return found
