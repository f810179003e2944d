"""The page reader of a full read gives exactly what the entry reader gives.

``user_page_reader`` maps a page of entries column by column and leaves
anything unusual to ``user_reader``; these tests generate pages full of the
unusual (absent, blank, padded, repeated and non-UTF-8 values, odd
spellings of attribute names, bad emails, GUIDs and ``userAccountControl``
values) and compare both readers record for record, skip reason included.
No server: the pages are built as python-ldap and ldap3 return them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.model import User
from daemon.sources.ldap.directory import Page
from daemon.sources.ldap.read import USER_COLUMNS, user_page_reader, user_reader
from daemon.sources.ldap.settings import Layout, LdapOptions


def _layout(preset: str, **extra: Any) -> Layout:
    return LdapOptions.model_validate(
        {
            "url": "ldaps://ldap.example.org",
            "bind_dn": "cn=reader,dc=example,dc=org",
            "bind_password_file": Path("/nonexistent"),
            "user_base": "ou=people,dc=example,dc=org",
            "group_base": "ou=groups,dc=example,dc=org",
            "preset": preset,
            **extra,
        }
    ).layout()


LAYOUTS = {
    "openldap": _layout("openldap"),
    "openldap, suspended values, memberOf": _layout(
        "openldap",
        suspended_attribute="employeeType",
        suspended_values=["Left", "on leave"],
        member_of_attribute="memberOf",
    ),
    "active directory": _layout("active_directory", member_of_attribute="memberOf"),
    "active directory, suspended values": _layout(
        "active_directory", suspended_attribute="employeeType", suspended_values=["Left"]
    ),
    "same attribute twice": _layout("openldap", attributes={"username": "mail"}),
}

TEXT = st.one_of(
    st.sampled_from(["", " ", "alice", " bob ", "carol@example.org", "Åsa Öberg", "a@", "@b"]),
    st.text(max_size=6),
)
VALUE = st.one_of(
    TEXT.map(lambda t: t.encode()),
    st.sampled_from([b"\xff\xfe", b"caf\xe9", b"512", b"514", b"66048", b"x2", b" 2 "]),
    st.binary(min_size=16, max_size=16),
    st.just(uuid.UUID(int=7).bytes_le),
)
VALUES = st.one_of(
    st.just([b"ok", b"\xff"]),
    st.just([b"ok", b"second"]),
    VALUE.map(lambda v: [v]),
    st.lists(VALUE, min_size=1, max_size=3),
)


@st.composite
def pages(draw: st.DrawFn, layout: Layout) -> Page:
    """A page whose entries mostly look right, spelled one way per page (as servers do)."""
    attributes = sorted(
        set(layout.fields.values())
        | {layout.change_attribute, "userAccountControl"}
        | {a for a in (layout.member_of_attribute, layout.suspended_attribute) if a}
    )
    spellings = {a.lower(): draw(st.sampled_from([a, a.lower(), a.upper()])) for a in attributes}
    lowered = draw(st.booleans())  # ldap3: lower-cased names and an empty table
    guid = layout.id_encoding == "guid"
    good = {
        a: [v if isinstance(v, bytes) else v.encode()]
        for a, v in {
            layout.fields["id"]: uuid.UUID(int=1).bytes_le if guid else "id-1",
            "userAccountControl": b"512",
            layout.fields["username"]: "alice",
            layout.fields["email"]: "alice@example.org",
            layout.change_attribute: "20240101000000Z",
        }.items()
    }
    entries = []
    for n in range(draw(st.integers(min_value=0, max_value=6))):
        attrs: dict[str, list[bytes]] = {}
        for attribute in attributes:
            # Mostly usable entries, so that the checks after decoding matter.
            options = ["text", "text", "absent", "absent", "odd"]
            if attribute in good:
                options += ["good"] * 6
            choice = draw(st.sampled_from(options))
            if choice == "good":
                values = list(good[attribute])
            elif choice == "absent":
                continue
            elif choice == "text":
                values = [draw(TEXT).encode()]
            else:
                values = draw(VALUES)
            name = attribute.lower() if lowered else spellings[attribute.lower()]
            attrs[name] = values
        entries.append((f"uid=u{n},ou=people,dc=example,dc=org", attrs))
    return Page(entries, {} if lowered else spellings)


def _check(layout: Layout, page: Page) -> None:
    one = user_reader(layout, "ldap://x")
    expected = [one(page.entry(i)) for i in range(len(page.entries))]
    got = user_page_reader(layout, "ldap://x")(page)
    assert got == expected
    # Equal and encoded alike: the snapshot's digests must not move.
    assert msgspec.json.encode(got) == msgspec.json.encode(expected)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(LAYOUTS)))
def test_page_reader_matches_entry_reader(data: st.DataObject, name: str) -> None:
    layout = LAYOUTS[name]
    _check(layout, data.draw(pages(layout)))


def test_a_plain_page_is_read_column_by_column() -> None:
    """The ordinary case: every user is read, none through the entry reader's skips."""
    layout = LAYOUTS["openldap"]
    entries = [
        (
            f"uid=u{n},ou=people,dc=example,dc=org",
            {
                "entryUUID": [f"id-{n}".encode()],
                "uid": [f"u{n}".encode()],
                "mail": [f" u{n}@example.org ".encode()],
                "givenName": ["Åsa".encode()],
                "sn": [b""],
                "modifyTimestamp": [b"20240101000000Z"],
            },
        )
        for n in range(50)
    ]
    page = Page(entries, {k.lower(): k for k in entries[0][1]})
    _check(layout, page)
    users = user_page_reader(layout, "ldap://x")(page)
    first = users[0]
    assert first.user == User(id="id-0", username="u0", email="u0@example.org", given_name="Åsa")
    assert first.change == "20240101000000Z"


def test_user_columns_are_every_user_field_but_manager() -> None:
    """The positional constructor must cover User exactly, or fields would be lost."""
    fields = {f.name for f in msgspec.structs.fields(User)}
    assert set(USER_COLUMNS) == fields - {"manager"}


def test_active_directory_states_match_entry_by_entry() -> None:
    """userAccountControl and a suspension attribute together, including a bad number."""
    layout = LAYOUTS["active directory, suspended values"]
    guid = uuid.UUID(int=1).bytes_le
    names = {"objectguid": "objectGUID", "useraccountcontrol": "userAccountControl"}
    entries = [
        (
            f"cn=u{n},ou=people,dc=example,dc=org",
            {
                "objectGUID": [guid],
                layout.fields["username"]: [f"u{n}".encode()],
                layout.fields["email"]: [f"u{n}@example.org".encode()],
                "userAccountControl": [control],
                "employeeType": [kind],
                layout.change_attribute: [b"100"],
            },
        )
        for n, (control, kind) in enumerate(
            [
                (b"512", b"Staff"),
                (b"514", b"Staff"),
                (b"512", b"left"),
                (b"x2", b"left"),
                (b"x2", b"Staff"),
            ]
        )
    ]
    for name in entries[0][1]:
        names.setdefault(name.lower(), name)
    page = Page(entries, names)
    _check(layout, page)
    states = [
        getattr(r, "user", None) and r.user.state for r in user_page_reader(layout, "x")(page)
    ]
    assert states[:3] == ["active", "suspended", "suspended"]
    assert states[3:] == [None, None]  # skipped: not a number
