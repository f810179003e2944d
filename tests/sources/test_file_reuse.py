"""Record-level reuse when the file is read again: the same result as reading it afresh,
and the snapshot says what changed since the last read (``base``/``changed``)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from daemon.sources.file import FileSource, RecordCache, changed_keys, parse, parse_reusing


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
