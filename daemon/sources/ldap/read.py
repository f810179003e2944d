"""From directory entries to canonical users and groups.

Entries are first turned into records that still point at each other by DN
(a manager, a group member); :func:`assemble` resolves those DNs to ids once
the whole directory is known. Keeping the records lets an incremental read
replace a few of them and assemble again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from itertools import repeat
from operator import contains, itemgetter
from typing import Any

import msgspec

from daemon.model import AccountState, SkippedRecord, Snapshot, User, make_group
from daemon.sources.ldap.directory import Entry, Page
from daemon.sources.ldap.presets import REQUIRED_FIELDS, UAC_ACCOUNTDISABLE
from daemon.sources.ldap.settings import Layout

_DN_SPACING = re.compile(r"\s*([,=+])\s*")
_SPACED = re.compile(r"\s[,=+]|[,=+]\s")


def dn_key(dn: str) -> str:
    """A comparison key for a DN: DNs are case-insensitive and spacing varies between servers."""
    key = dn.strip().casefold()
    # Most DNs have no space by a separator; substituting anyway costs a
    # template expansion per separator, for every member of every group.
    # Many have no whitespace at all, which is cheaper still to see: every
    # character ``\s`` matches but the space is one isprintable() refuses.
    if " " not in key and key.isprintable():
        return key
    return _DN_SPACING.sub(r"\1", key) if _SPACED.search(key) else key


class UserRecord(msgspec.Struct, frozen=True, gc=False):
    """A valid user entry; ``user.manager`` is still unresolved (see ``manager_dn``).

    A struct rather than a frozen dataclass: a full read builds one per user,
    and a frozen dataclass sets each field through ``object.__setattr__``.
    Both encode alike (a map by field name), so syncrepl checkpoints read either.
    Records hold only text and :class:`User`, so no cycle: ``gc=False``, as there.
    """

    dn: str
    user: User
    manager_dn: str | None
    member_of: tuple[str, ...]
    change: str | None


class GroupRecord(msgspec.Struct, frozen=True, gc=False):
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


def _first_text(values: list[bytes] | None, attr: str) -> str | None:
    """The first value, stripped; ``None`` when absent or blank.

    Every value must be UTF-8, not just the first: an entry with one broken
    value is skipped whole, whichever value comes first.
    """
    if not values:
        return None
    try:
        value = values[0].decode("utf-8").strip()
        for other in values[1:]:
            other.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad(attr, "is not UTF-8 text") from None
    return value or None


def _all_texts(values: list[bytes] | None, attr: str) -> list[str]:
    try:
        return [v.decode("utf-8") for v in values or ()]
    except UnicodeDecodeError:
        raise _Bad(attr, "is not UTF-8 text") from None


def _object_id(attrs: dict[str, list[bytes]], attr: str, key: str, guid: bool) -> str:
    if guid:
        values = attrs.get(key)
        if not values:
            raise _Bad(attr, "missing")
        raw = values[0]
        if len(raw) != 16:
            raise _Bad(attr, f"is {len(raw)} bytes, a GUID has 16")
        # AD stores the first three GUID fields little-endian.
        return str(uuid.UUID(bytes_le=raw))
    value = _first_text(attrs.get(key), attr)
    if value is None:
        raise _Bad(attr, "missing")
    return value


UserReader = Callable[[Entry], "UserRecord | SkippedRecord"]
GroupReader = Callable[[Entry], "GroupRecord | SkippedRecord"]
#: Maps a page of entries to one record (or reason) per entry, in order.
PageReader = Callable[[Page], "list[Any]"]


def user_reader(layout: Layout, where: str) -> UserReader:
    """A function turning one entry into a user, or into the reason it cannot be one.

    Everything that depends only on the layout is worked out here, once per
    read rather than once per entry: a full read maps every user, and this
    is most of what the source does above the client library. So each value
    is decoded in line (no call per attribute), only present values go into
    the keyword arguments of :class:`User` (absent ones take its defaults),
    and the checks run in the order the fields are mapped, so the reason an
    entry is skipped does not depend on how it is computed.
    """
    # Entry attributes are keyed by lower-cased name; (field, attribute, key).
    fields = [(n, a, a.lower()) for n, a in layout.fields.items() if n != "id"]
    id_attr = layout.fields["id"]
    id_key, guid = id_attr.lower(), layout.id_encoding == "guid"
    required = [(n, layout.fields[n]) for n in REQUIRED_FIELDS if n != "id"]
    email_attr = layout.fields["email"]
    member_of = layout.member_of_attribute
    member_of_key = member_of.lower() if member_of else ""
    change = layout.change_attribute
    change_key = change.lower()
    suspended = _suspension(layout)
    # Without userAccountControl, the suspension is one attribute: read in line.
    account_control = layout.account_control
    suspended_attr = layout.suspended_attribute or ""
    suspended_key = suspended_attr.lower()
    wanted = layout.suspended_values
    active, locked = AccountState.ACTIVE, AccountState.SUSPENDED

    def read(entry: Entry) -> UserRecord | SkippedRecord:
        attrs = entry.attrs
        get = attrs.get
        object_id: str | None = None
        attr = id_attr
        try:
            if guid:
                object_id = _object_id(attrs, id_attr, id_key, guid)
            else:
                raw = get(id_key)
                found = raw[0].decode().strip() if raw else ""
                if raw and len(raw) > 1:
                    _rest_is_text(raw)
                if not found:
                    raise _Bad(id_attr, "missing")
                object_id = found
            values: dict[str, Any] = {"id": object_id}
            # ``attr`` names the attribute a UnicodeDecodeError below comes from.
            for name, attr, key in fields:  # noqa: B007
                raw = get(key)
                if raw:
                    value = raw[0].decode().strip()
                    if len(raw) > 1:
                        _rest_is_text(raw)
                    if value:
                        values[name] = value
            for name, required_attr in required:
                if name not in values:
                    raise _Bad(required_attr, "missing")
            email: str = values["email"]
            if "@" not in email.strip("@"):
                raise _Bad(email_attr, f"{email!r} is not an email address")
            if account_control:
                values["state"] = locked if suspended(attrs) else active
            elif suspended_key:
                attr = suspended_attr
                raw = get(suspended_key)
                value = raw[0].decode().strip() if raw else ""
                if raw and len(raw) > 1:
                    _rest_is_text(raw)
                # Any value suspends unless ``suspended_values`` names the ones that do.
                held = bool(value) and (not wanted or value.casefold() in wanted)
                values["state"] = locked if held else active
            groups: tuple[str, ...] = ()
            if member_of:
                attr = member_of
                groups = tuple([dn_key(v.decode()) for v in get(member_of_key) or ()])
            attr = change
            raw = get(change_key)
            changed = (raw[0].decode().strip() or None) if raw else None
            if raw and len(raw) > 1:
                _rest_is_text(raw)
        except UnicodeDecodeError:
            return SkippedRecord(
                where=where,
                record=entry.dn,
                field=attr,
                reason="is not UTF-8 text",
                object_id=object_id,
            )
        except _Bad as bad:
            return SkippedRecord(
                where=where,
                record=entry.dn,
                field=bad.attribute,
                reason=bad.reason,
                object_id=object_id,
            )
        manager_dn: str | None = values.pop("manager", None)
        user = User(**values)
        return UserRecord(entry.dn, user, manager_dn, groups, changed)

    return read


#: What an absent attribute reads as in a column: one blank value.
_ABSENT = [b""]
#: ``get(text, text)`` is ``None`` for a blank text and the text otherwise.
_BLANK_IS_NONE: dict[str, None] = {"": None}


def per_entry(read: Callable[[Entry], Any]) -> PageReader:
    """A page reader calling ``read`` on each entry (with lower-cased names)."""

    def read_page(page: Page) -> list[Any]:
        return [read(page.entry(i)) for i in range(len(page.entries))]

    return read_page


def _user(
    id: str,
    username: str,
    email: str,
    given_name: str,
    family_name: str,
    display_name: str | None,
    title: str | None,
    phone: str | None,
    employee_id: str | None,
    department: str | None,
    cost_center: str | None,
    company: str | None,
    division: str | None,
    state: AccountState,
) -> User:
    """A :class:`User` from positional values: ``map`` calls this once per row."""
    return User(
        id=id,
        username=username,
        email=email,
        given_name=given_name,
        family_name=family_name,
        display_name=display_name,
        title=title,
        phone=phone,
        employee_id=employee_id,
        department=department,
        cost_center=cost_center,
        company=company,
        division=division,
        state=state,
    )


#: The parameters of :func:`_user`, in order: every field of :class:`User` but
#: ``manager``, which :func:`assemble` resolves.
USER_COLUMNS = tuple(_user.__code__.co_varnames[: _user.__code__.co_argcount])


def user_page_reader(layout: Layout, where: str) -> PageReader:
    """Like :func:`user_reader`, a page at a time, giving the same records and reasons.

    A full read maps every user, and this is most of what the source does
    above the client library. Each entry's values are gathered in one C call
    (in the page's spelling); then each attribute (a column) is decoded and
    stripped for the whole page with ``map``, blanks becoming absent, and
    the users are built positionally. An entry that needs a decision the
    column code does not make (a value that is missing or not an email
    address, a second value, a ``userAccountControl`` that is not a number)
    goes through :func:`user_reader`, and so does the whole page when a
    value in it is not UTF-8: the reason an entry is skipped is that
    reader's, always.
    """
    one = user_reader(layout, where)
    defaults = {f.name: f.default for f in msgspec.structs.fields(User)}
    mapped = {n: a.lower() for n, a in layout.fields.items() if n != "manager"}
    required = set(REQUIRED_FIELDS)
    if not set(mapped) <= set(USER_COLUMNS) or "state" in mapped:
        return per_entry(one)  # a field this reader does not know: entry by entry
    guid = layout.id_encoding == "guid"
    manager = layout.fields.get("manager")
    member_of = layout.member_of_attribute
    account_control = layout.account_control
    suspended = (layout.suspended_attribute or "").lower()
    wanted = layout.suspended_values
    active, locked = AccountState.ACTIVE, AccountState.SUSPENDED
    # The attributes gathered per entry, lower-cased: the mapped fields first,
    # in USER_COLUMNS order; then the others, each at a known index.
    keys = [mapped[n] for n in USER_COLUMNS if n in mapped]
    extra: dict[str, int] = {}
    for name, attribute in (
        ("manager", manager),
        ("member_of", member_of),
        ("control", "userAccountControl" if account_control else None),
        ("suspended", suspended or None),
        ("change", layout.change_attribute),
    ):
        if attribute:
            extra[name] = len(keys)
            keys.append(attribute.lower())
    #: Where each mapped field's values are among the gathered ones.
    at = {n: keys.index(a) for n, a in mapped.items()}
    state_at = USER_COLUMNS.index("state")
    first = itemgetter(0)
    absent = [_ABSENT] * len(keys)

    def read_page(page: Page) -> list[UserRecord | SkippedRecord]:
        entries = page.entries
        if not entries:
            return []
        spell = page.names.get
        spelled = [spell(k, k) for k in keys]
        #: Per gathered attribute, its values in every entry (``_ABSENT`` if none).
        gathered = list(zip(*[tuple(map(a.get, spelled, absent)) for _, a in entries], strict=True))
        #: Rows the column code leaves to ``one``.
        slow: set[int] = set()
        texts: dict[int, list[str]] = {}

        def column(index: int) -> list[str]:
            """First values, decoded and stripped ("" when absent); rows with more go slow."""
            found = texts.get(index)
            if found is None:
                values = gathered[index]
                if sum(map(len, values)) != len(values):
                    slow.update(i for i, v in enumerate(values) if len(v) != 1)
                found = texts[index] = list(map(str.strip, map(bytes.decode, map(first, values))))
            return found

        def blank(column: list[str]) -> None:
            if "" in column:
                slow.update(i for i, t in enumerate(column) if not t)

        def optional(column: list[str]) -> list[str | None] | list[str]:
            return list(map(_BLANK_IS_NONE.get, column, column)) if "" in column else column

        try:
            columns: list[Iterable[Any]] = []
            for name in USER_COLUMNS:
                if name not in mapped:  # state included: it is set below
                    columns.append(repeat(defaults[name]))
                    continue
                if name == "id" and guid:
                    ids = [
                        str(uuid.UUID(bytes_le=v[0])) if len(v[0]) == 16 else ""
                        for v in gathered[at[name]]
                    ]
                    blank(ids)
                    columns.append(ids)
                    continue
                text = column(at[name])
                if name in required:
                    blank(text)
                if name == "email":
                    has_at = map(contains, map(str.strip, text, repeat("@")), repeat("@"))
                    slow.update(i for i, ok in enumerate(has_at) if not ok)
                columns.append(optional(text) if defaults[name] is None else text)
            # Any value suspends unless ``suspended_values`` names the ones that do.
            held: Iterable[bool] = (
                [
                    bool(v) and (not wanted or v.casefold() in wanted)
                    for v in column(extra["suspended"])
                ]
                if suspended
                else repeat(False)
            )
            if account_control:
                states: list[AccountState] = []
                for i, (number, off) in enumerate(
                    zip(column(extra["control"]), held, strict=False)
                ):
                    try:
                        # Read even when ``off``: a bad number skips the entry either way.
                        disabled = bool(number) and bool(int(number) & UAC_ACCOUNTDISABLE)
                    except ValueError:
                        slow.add(i)
                        disabled = False
                    states.append(locked if disabled or off else active)
                columns[state_at] = states
            elif suspended:
                columns[state_at] = [locked if off else active for off in held]
            managers = optional(column(extra["manager"])) if manager else repeat(None)
            groups: Iterable[tuple[str, ...]] = (
                [
                    () if v is _ABSENT else tuple([dn_key(d.decode()) for d in v])
                    for v in gathered[extra["member_of"]]
                ]
                if member_of
                else repeat(())
            )
            changes = optional(column(extra["change"]))
        except (UnicodeDecodeError, IndexError):
            # A value that is not UTF-8 (or an attribute with no value): let
            # the entry reader name the entry and the attribute.
            return [one(page.entry(i)) for i in range(len(entries))]
        out: list[UserRecord | SkippedRecord] = list(
            map(UserRecord, map(first, entries), map(_user, *columns), managers, groups, changes)
        )
        for i in slow:
            out[i] = one(page.entry(i))
        return out

    return read_page


def _rest_is_text(values: list[bytes]) -> None:
    """Raise :class:`UnicodeDecodeError` unless every value after the first is UTF-8.

    An entry with one broken value is skipped whole, whichever value comes first.
    """
    for other in values[1:]:
        other.decode()


def _suspension(layout: Layout) -> Callable[[dict[str, list[bytes]]], bool]:
    """Whether an entry's attributes say the account is suspended."""
    account_control = layout.account_control
    attr = layout.suspended_attribute
    key = attr.lower() if attr else ""
    wanted = layout.suspended_values

    def suspended(attrs: dict[str, list[bytes]]) -> bool:
        if account_control:
            raw = _first_text(attrs.get("useraccountcontrol"), "userAccountControl")
            if raw is not None:
                try:
                    flags = int(raw)
                except ValueError:
                    raise _Bad("userAccountControl", f"{raw!r} is not an integer") from None
                if flags & UAC_ACCOUNTDISABLE:
                    return True
        if attr:
            value = _first_text(attrs.get(key), attr)
            if value is not None:
                return not wanted or value.casefold() in wanted
        return False

    return suspended


def id_reader(layout: Layout) -> Callable[[Entry], str | None]:
    """A function giving an entry's object id, or ``None`` when it has no usable one."""
    id_attr = layout.fields["id"]
    id_key, guid = id_attr.lower(), layout.id_encoding == "guid"

    def read(entry: Entry) -> str | None:
        try:
            return _object_id(entry.attrs, id_attr, id_key, guid)
        except _Bad:
            return None

    return read


def user_record(entry: Entry, layout: Layout, where: str) -> UserRecord | SkippedRecord:
    """The entry as a user, or the reason it cannot be one (see :func:`user_reader`)."""
    return user_reader(layout, where)(entry)


def group_reader(layout: Layout, where: str) -> GroupReader:
    """A function turning one entry into a group, or into the reason it cannot be one."""
    id_attr = layout.fields["id"]
    id_key, guid = id_attr.lower(), layout.id_encoding == "guid"
    name_attr = layout.group_name_attribute
    name_key = name_attr.lower()
    member_attrs = [(a, a.lower()) for a in layout.group_member_attributes]
    change = layout.change_attribute
    change_key = change.lower()

    def read(entry: Entry) -> GroupRecord | SkippedRecord:
        attrs = entry.attrs
        group_id: str | None = None
        try:
            group_id = _object_id(attrs, id_attr, id_key, guid)
            name = _first_text(attrs.get(name_key), name_attr)
            if name is None:
                raise _Bad(name_attr, "missing")
            members = {dn_key(v) for a, k in member_attrs for v in _all_texts(attrs.get(k), a)}
            changed = _first_text(attrs.get(change_key), change)
        except _Bad as bad:
            return SkippedRecord(
                where=where,
                record=entry.dn,
                field=bad.attribute,
                reason=bad.reason,
                kind="group",
                object_id=group_id,
            )
        return GroupRecord(entry.dn, group_id, name, tuple(sorted(members)), changed)

    return read


def group_record(entry: Entry, layout: Layout, where: str) -> GroupRecord | SkippedRecord:
    """The entry as a group, or the reason it cannot be one (see :func:`group_reader`)."""
    return group_reader(layout, where)(entry)


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
    found = out.users
    user_ids: dict[str, str] = {}
    via_member_of: dict[str, set[str]] = {}
    for key, rec in users.items():
        user = rec.user
        if user.id in found:
            out.skipped.append(
                SkippedRecord(where, rec.dn, id_attribute, "duplicate id", object_id=user.id)
            )
            continue
        user_ids[key] = user.id
        found[user.id] = user
        for group_key in rec.member_of:
            via_member_of.setdefault(group_key, set()).add(user.id)
    replace = msgspec.structs.replace
    # A manager has several reports: each DN value is normalised once ("": no such user).
    manager_ids: dict[str, str] = {}
    for rec in users.values():
        manager_dn = rec.manager_dn
        # ``is`` skips the loser of a duplicate id, whose manager must not win.
        if manager_dn and found.get(rec.user.id) is rec.user:
            manager = manager_ids.get(manager_dn)
            if manager is None:
                manager = manager_ids[manager_dn] = user_ids.get(dn_key(manager_dn), "")
            if manager:
                found[rec.user.id] = replace(rec.user, manager=manager)

    for key, grec in groups.items():
        if grec.id in out.groups:
            out.skipped.append(
                SkippedRecord(
                    where, grec.dn, id_attribute, "duplicate id", kind="group", object_id=grec.id
                )
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
