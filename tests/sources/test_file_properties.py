"""Properties of the directory file parser: whatever the input, no crash and nothing lost."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from daemon.sources.base import SourceError
from daemon.sources.file import parse

junk = st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2))
ids = st.sampled_from(["u1", "u2", "u3", "u4", "", "u 5"]) | st.integers(0, 3)
texts = st.one_of(st.none(), st.text(max_size=8), st.integers(), st.booleans())
emails = st.sampled_from(["a@x.se", "A@X.SE", "b@x.se", "c@y.example.com", "bad", "d@x", None])
user_records = st.fixed_dictionaries(
    {"id": ids, "username": st.sampled_from(["ann", "Ann", "bo", "cy", "", None])},
    optional={
        "email": emails,
        "title": texts | junk,
        "manager": ids,
        "state": st.sampled_from(["active", "suspended", "unassigned", 1]) | junk,
        "password_hash": st.sampled_from(["$argon2id$v=19$x", "plain", None]),
        "nickname": texts,
    },
)
group_records = st.fixed_dictionaries(
    {"id": st.sampled_from(["g1", "g2", "g3", "", 7]), "name": st.sampled_from(["A", "a", "B"])},
    optional={"members": st.lists(ids, max_size=4) | texts},
)
directories = st.fixed_dictionaries(
    {
        "users": st.lists(user_records | junk, max_size=8),
        "groups": st.lists(group_records | junk, max_size=5),
    }
)


@settings(max_examples=100, deadline=None)
@given(directories)
# Found by CI: a kept user whose username differs from a skipped one by case.
@example(
    {
        "users": [
            {"id": "u2", "username": "ann"},
            {"id": "u1", "username": "Ann", "email": "a@x.se", "password_hash": "$argon2id$v=19$x"},
        ],
        "groups": [],
    }
)
def test_every_record_is_kept_or_reported(doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()
    snapshot, hashes = parse(data, "json", "dir.json", "v1")

    # A dropped manager or member is reported, but its record is kept.
    skips = [s for s in snapshot.skipped if not s.reason.endswith("; dropped")]
    assert len(snapshot.users) + sum(s.kind == "user" for s in skips) == len(doc["users"])
    assert len(snapshot.groups) + sum(s.kind == "group" for s in skips) == len(doc["groups"])

    usernames = [u.username.casefold() for u in snapshot.users.values()]
    emails_seen = [u.email.casefold() for u in snapshot.users.values()]
    assert len(set(usernames)) == len(usernames)
    assert len(set(emails_seen)) == len(emails_seen)
    for group in snapshot.groups.values():
        assert set(group.members) <= set(snapshot.users)
    for user in snapshot.users.values():
        assert user.manager is None or user.manager in snapshot.users
    # Hashes are keyed by the username as the directory spells it.
    assert set(hashes) <= {u.username for u in snapshot.users.values()}
    assert all(h.startswith("$argon2id$") for h in hashes.values())

    # YAML reads the same document to the same directory.
    from_yaml, _ = parse(yaml.safe_dump(doc).encode(), "yaml", "dir.json", "v1")
    assert (from_yaml.users, from_yaml.groups) == (snapshot.users, snapshot.groups)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["yaml", "json"]))
def test_any_bytes_parse_or_raise_source_error(data: bytes, fmt: Any) -> None:
    try:
        parse(data, fmt, "dir.x", "v1")
    except SourceError as exc:
        assert "dir.x" in str(exc)
