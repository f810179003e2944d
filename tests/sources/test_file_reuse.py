"""Record-level reuse when the file is read again: the same result as reading it afresh,
and the snapshot says what changed since the last read (``base``/``changed``)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from daemon.model import Logins
from daemon.sources.file import (
    FileSource,
    RecordCache,
    changed_keys,
    parse,
    parse_reusing,
)


def random_doc(rng: random.Random, n: int) -> dict[str, Any]:
    users: list[Any] = []
    for i in range(n):
        u: dict[str, Any] = {
            "id": f"u{i}",
            "username": f"user{rng.randrange(n * 3)}",
            "email": f"e{i}@x.example",
            "given_name": rng.choice(["Åsa", "Björn", "Zoë", "李"]),
        }
        if rng.random() < 0.3:
            u["manager"] = f"u{rng.randrange(n + 3)}"  # sometimes nobody
        if rng.random() < 0.1:
            u["state"] = "suspended"
        if rng.random() < 0.05:
            u["email"] = "not-an-email"  # a bad record
        users.append(u)
    if rng.random() < 0.3:
        users.append("not a mapping")
    groups: list[Any] = [
        {
            "id": f"g{j}",
            "name": rng.choice(["All", "Eng", "Ops", f"T{j}"]),
            "members": [f"u{rng.randrange(n + 3)}" for _ in range(rng.randrange(6))],
        }
        for j in range(6)
    ]
    return {"users": users, "groups": groups}


def edit(rng: random.Random, doc: dict[str, Any]) -> None:
    users, groups = doc["users"], doc["groups"]
    for _ in range(rng.randint(1, 3)):
        what = rng.randrange(5)
        dicts = [u for u in users if isinstance(u, dict)]
        if what == 0 and dicts:
            rng.choice(dicts)["title"] = rng.choice(["Dev", "Ops"])
        elif what == 1 and users:
            users.pop(rng.randrange(len(users)))
        elif what == 2:
            i = rng.randrange(1000, 2000)
            users.append({"id": f"n{i}", "username": f"new{i}", "email": f"n{i}@x.example"})
        elif what == 3 and groups:
            rng.choice(groups)["members"].append(f"u{rng.randrange(len(users) + 2)}")
        elif what == 4 and dicts:
            rng.choice(dicts)["username"] = rng.choice(dicts)["username"]  # a clash, maybe


@pytest.mark.parametrize("seed", range(25))
def test_reusing_records_gives_what_a_fresh_parse_gives(seed: int) -> None:
    rng = random.Random(seed)
    doc = random_doc(rng, rng.randint(3, 30))
    cache: RecordCache | None = None
    last = None
    for step in range(10):
        data = json.dumps(doc).encode()
        fresh, fresh_hashes = parse(data, "json", "d.json", "v")
        reused, hashes, cache = parse_reusing(data, "json", "d.json", "v", cache)
        assert reused.users == fresh.users, (seed, step)
        assert reused.groups == fresh.groups, (seed, step)
        assert sorted(map(str, reused.skipped)) == sorted(map(str, fresh.skipped)), (seed, step)
        assert hashes == fresh_hashes
        if last is not None:
            expected = {("user", u) for u in last.users.keys() ^ fresh.users.keys()}
            expected |= {
                ("user", u)
                for u in last.users.keys() & fresh.users.keys()
                if last.users[u] != fresh.users[u]
            }
            expected |= {("group", g) for g in last.groups.keys() ^ fresh.groups.keys()}
            expected |= {
                ("group", g)
                for g in last.groups.keys() & fresh.groups.keys()
                if last.groups[g] != fresh.groups[g]
            }
            assert changed_keys(last, reused) == expected
        last = reused
        edit(rng, doc)


def test_the_file_source_says_what_changed_since_its_last_read(tmp_path: Path) -> None:
    path = tmp_path / "d.json"

    def write(titles: list[str]) -> None:
        users = [
            {"id": f"u{i}", "username": f"u{i}", "email": f"u{i}@x.example", "title": t}
            for i, t in enumerate(titles)
        ]
        path.write_text(json.dumps({"users": users, "groups": []}))

    source = FileSource(path=path, format="json", where="d.json")
    write(["a", "b", "c"])
    first = anyio.run(source.fetch, None)
    assert first is not None and first.base is None and first.changed is None
    write(["a", "B", "c"])
    second = anyio.run(source.fetch, first.version)
    assert second is not None
    assert second.base == first.version
    assert second.changed == frozenset({("user", "u1")})
    assert second.users["u0"] is first.users["u0"]  # reused, not normalised again


def clean_doc(rng: random.Random, n: int) -> dict[str, Any]:
    """A directory with nothing to skip: the re-reads take the incremental checks."""
    users: list[Any] = [
        {
            "id": f"u{i}",
            "username": f"User{i}",
            "email": f"u{i}@x.example",
            "given_name": rng.choice(["Åsa", "Zoë", "李"]),
            **({"manager": f"u{rng.randrange(i)}"} if i and rng.random() < 0.6 else {}),
            **({"password_hash": f"$argon2id$v=19$h{i}"} if rng.random() < 0.2 else {}),
        }
        for i in range(n)
    ]
    groups: list[Any] = [
        {"id": f"g{j}", "name": f"G{j}", "members": [f"u{rng.randrange(n)}" for _ in range(4)]}
        for j in range(4)
    ]
    return {"users": users, "groups": groups}


def clean_edit(rng: random.Random, doc: dict[str, Any]) -> None:
    """Mostly edits a clean directory stays clean under, sometimes one that makes a clash."""
    users, groups = doc["users"], doc["groups"]
    dicts = [u for u in users if isinstance(u, dict)]
    what = rng.randrange(12)
    if what == 0 and dicts:
        rng.choice(dicts)["title"] = rng.choice(["Dev", "Ops"])
    elif what == 1 and users:
        users.pop(rng.randrange(len(users)))  # a manager or a member may go with it
    elif what == 2:
        i = rng.randrange(100, 200)
        users.insert(
            rng.randrange(len(users) + 1),
            {"id": f"n{i}", "username": f"new{i}", "email": f"N{i}@x.example"},
        )
    elif what == 3 and dicts:
        rng.choice(dicts)["username"] = rng.choice(dicts)["username"].upper()  # a clash, maybe
    elif what == 4 and dicts:
        rng.choice(dicts)["email"] = rng.choice(dicts)["email"]  # a clash, maybe
    elif what == 5 and users:
        users.insert(rng.randrange(len(users) + 1), rng.choice(users))  # a record twice
    elif what == 6 and dicts:
        rng.choice(dicts)["id"] = rng.choice(dicts)["id"]  # a duplicate id, maybe
    elif what == 7 and dicts:
        rng.choice(dicts)["email"] = "not-an-email"  # a bad record
    elif what == 8 and dicts:
        rng.choice(dicts)["manager"] = f"u{rng.randrange(len(users) + 3)}"
    elif what == 9 and groups:
        rng.choice(groups)["members"].append(f"u{rng.randrange(len(users) + 2)}")
    elif what == 10 and dicts:
        user = rng.choice(dicts)
        user["id"], user["username"] = f"r{rng.randrange(50)}", f"renamed{rng.randrange(50)}"
    elif what == 11 and len(users) > 1:
        i, j = rng.randrange(len(users)), rng.randrange(len(users))
        users[i], users[j] = users[j], users[i]  # order decides which of a clash is kept


@pytest.mark.parametrize("seed", range(60))
def test_incremental_checks_give_what_a_fresh_parse_gives(seed: int) -> None:
    """Re-reads after a clean read check only the changed records (when nothing clashes):
    the same users, groups, password hashes and reports, in the same order, as a fresh
    parse of the same bytes."""
    rng = random.Random(seed)
    doc = clean_doc(rng, rng.randint(5, 25))
    cache: RecordCache | None = None
    incremental = 0
    last_clean = json.dumps(doc)
    for step in range(40):
        data = json.dumps(doc).encode()
        fresh, fresh_hashes = parse(data, "json", "d.json", "v")
        took = cache is not None and cache.logins is not None
        reused, hashes, cache = parse_reusing(data, "json", "d.json", "v", cache)
        incremental += took
        assert reused.users == fresh.users, (seed, step)
        assert list(reused.users) == list(fresh.users), (seed, step)
        assert reused.groups == fresh.groups, (seed, step)
        assert list(map(str, reused.skipped)) == list(map(str, fresh.skipped)), (seed, step)
        assert reused.skipped == fresh.skipped, (seed, step)
        assert hashes == fresh_hashes, (seed, step)
        assert cache is not None
        # The cache holds what a fresh read would have left, whichever way it was updated.
        assert (cache.logins is not None) == (not fresh.skipped), (seed, step)
        if cache.logins is not None:
            rebuilt = Logins(cache.users.values())
            assert cache.logins.usernames == rebuilt.usernames, (seed, step)
            assert cache.logins.emails == rebuilt.emails, (seed, step)
            assert sorted(u.id for u in cache.users.values()) == sorted(fresh.users)
        if not fresh.skipped:
            last_clean = data.decode()
        elif rng.random() < 0.5:
            doc = json.loads(last_clean)  # the clash or the bad record is fixed again
        clean_edit(rng, doc)
    assert incremental >= 3, seed  # the path under test was taken


def test_group_members_share_the_users_id_strings() -> None:
    doc = clean_doc(random.Random(1), 10)
    snapshot, _, _ = parse_reusing(json.dumps(doc).encode(), "json", "d.json", "v", None)
    for group in snapshot.groups.values():
        for member in group.members:
            assert member is snapshot.users[member].id


def test_a_file_ending_in_a_newline_is_reused_too() -> None:
    data = json.dumps(clean_doc(random.Random(2), 6)).encode() + b"\n"
    first, _, cache = parse_reusing(data, "json", "d.json", "v", None)
    assert cache is not None and cache.logins is not None
    again, _, cache = parse_reusing(data, "json", "d.json", "v", cache)
    assert cache is not None and again.users == first.users
    assert all(again.users[uid] is user for uid, user in first.users.items())
