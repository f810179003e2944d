"""Screening: a known record that became invalid keeps its last good state; logins are unique."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from daemon import metrics
from daemon.config import EngineSettings
from daemon.engine import Engine
from daemon.model import Snapshot, make_group
from daemon.plugins import plugin_manager
from daemon.screening import duplicate_logins, stale_objects
from daemon.sources.file import FileSource
from daemon.store.sqlite import SqliteStore

from .support import FedSource, RecordingTarget, engine, slot, user

BOUND = "App"


def person(uid: str, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "username": uid, "email": f"{uid}@corp.example", **fields}


def stale_gauge(kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value("provisiond_directory_stale_objects", {"kind": kind})
    return value or 0.0


@dataclass
class FileWorld:
    engine: Engine
    target: RecordingTarget
    path: Path

    def write(self, users: list[dict[str, Any]], members: list[str]) -> None:
        doc = {
            "users": users,
            "groups": [
                {"id": "g-app", "name": BOUND, "members": members},
                {"id": "g-eng", "name": "Engineering", "members": members[:2]},
            ],
        }
        self.path.write_text(json.dumps(doc))


@pytest.fixture
async def file_world(tmp_path: Path) -> AsyncIterator[FileWorld]:
    path = tmp_path / "directory.json"
    source = FileSource(path=path, format="json", where="directory.json")
    target = RecordingTarget()
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    eng = Engine(
        source,
        [slot(target, [BOUND, "Engineering"], min_count=1000)],
        store,
        plugin_manager(entry_points=False),
        EngineSettings(),
    )
    yield FileWorld(eng, target, path)
    await store.aclose()


async def test_a_record_that_becomes_invalid_keeps_its_last_good_state(
    file_world: FileWorld,
) -> None:
    w = file_world
    ids = ["u0", "u1", "u2", "u3"]
    w.write([person(u) for u in ids], ids)
    await w.engine.cycle()
    u1 = w.target.holding[("user", "u1")]
    before = dict(w.target.holding)

    # A typo makes u1's email invalid: the file source skips the record.
    # Nothing changes downstream for u1: no deactivation, no group PATCH.
    broken = [person(u) for u in ids]
    broken[1]["email"] = "u1.corp.example"
    broken[2]["title"] = "CTO"  # and an unrelated change still goes through
    w.write(broken, ids)
    w.target.calls.clear()
    report = await w.engine.cycle()
    assert w.target.changes() == ["user_changed"]
    assert w.target.calls[0][0].object_id == "u2"
    assert w.target.holding[("user", "u1")] == u1
    for gid in ("g-app", "g-eng"):
        assert w.target.holding[("group", gid)] == before[("group", gid)]
    assert report.stale == 1
    assert stale_gauge("user") == 1
    (stale,) = await stale_objects(w.engine.store)
    assert stale["object"] == "user:u1"
    assert "email" in stale["problems"][0] and "directory.json" in stale["problems"][0]
    # The committed record stays the last good one (sign-in answers from it).
    record = (await w.engine.store.records([("user", "u1")]))[("user", "u1")]
    assert record == u1
    # `check` sees it too.
    assert [s.name for s in await w.engine.stale_now()] == ["user:u1"]
    # The plan sends nothing for it.
    assert [p for p in await w.engine.preview() if p.delta.changes] == []

    # Valid again, with a new title: the change goes out, nothing is stale.
    fixed = [person(u) for u in ids]
    fixed[1]["title"] = "Lead"
    fixed[2]["title"] = "CTO"
    w.write(fixed, ids)
    w.target.calls.clear()
    report = await w.engine.cycle()
    assert w.target.changes() == ["user_changed"]
    assert w.target.holding[("user", "u1")].title == "Lead"  # type: ignore[union-attr]
    assert report.stale == 0
    assert stale_gauge("user") == 0
    assert await stale_objects(w.engine.store) == []

    # Really removed from the file: now it is gone, and removed downstream.
    w.write([p for p in fixed if p["id"] != "u1"], ["u0", "u2", "u3"])
    w.target.calls.clear()
    await w.engine.cycle()
    assert "user_removed" in w.target.changes()
    assert ("user", "u1") not in w.target.holding


async def test_a_group_record_that_becomes_invalid_keeps_its_members(
    file_world: FileWorld,
) -> None:
    w = file_world
    ids = ["u0", "u1", "u2"]
    w.write([person(u) for u in ids], ids)
    await w.engine.cycle()
    held = dict(w.target.holding)
    doc = json.loads(w.path.read_text())
    del doc["groups"][1]["name"]  # Engineering loses its name: the record is skipped
    doc["users"].append(person("u3"))  # a newcomer is still provisioned
    doc["groups"][0]["members"].append("u3")
    w.path.write_text(json.dumps(doc))
    w.target.calls.clear()
    report = await w.engine.cycle()
    assert sorted(w.target.changes()) == ["members_added", "user_added"]
    assert w.target.holding[("group", "g-eng")] == held[("group", "g-eng")]
    assert report.stale == 1 and stale_gauge("group") == 1
    assert [s["object"] for s in await stale_objects(w.engine.store)] == ["group:g-eng"]


async def test_a_stale_record_survives_a_restart_and_an_unknown_invalid_one_is_not_created(
    file_world: FileWorld, tmp_path: Path
) -> None:
    w = file_world
    w.write([person("u0"), person("u1")], ["u0", "u1"])
    await w.engine.cycle()
    broken = [person("u0"), person("u1", email="nope"), person("u9", email="nope")]
    w.write(broken, ["u0", "u1", "u9"])
    await w.engine.cycle()
    (stale,) = await stale_objects(w.engine.store)
    since = stale["since"]
    # A new process (force_plan, a full read) keeps it stale, since the first time.
    again = Engine(
        FileSource(path=w.path, format="json", where="directory.json"),
        w.engine.targets,
        w.engine.store,
        w.engine.pm,
        EngineSettings(),
    )
    w.target.calls.clear()
    await again.cycle()
    assert w.target.changes() == []
    assert ("user", "u9") not in w.target.holding
    (stale,) = await stale_objects(w.engine.store)
    assert stale["since"] == since


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Any]:
    """``await fed(snapshot)``: an engine over a fed source and one recording target."""
    made: list[Engine] = []

    async def make(snapshot: Snapshot) -> tuple[Engine, FedSource, RecordingTarget]:
        source, target = FedSource(snapshot), RecordingTarget()
        eng = await engine(tmp_path, source, [slot(target, [BOUND])])
        made.append(eng)
        return eng, source, target

    yield make
    for eng in made:
        await eng.store.aclose()  # type: ignore[attr-defined]


def org(*users: Any, members: list[str] | None = None) -> Snapshot:
    ids = [u.id for u in users]
    return Snapshot.of(users, [make_group("g-app", BOUND, ids if members is None else members)])


def test_duplicate_logins_ignore_case() -> None:
    found = duplicate_logins(
        [
            user("a", email="Ann@x.example"),
            user("b", email="ann@X.EXAMPLE"),
            user("c", username="A"),
            user("d"),
        ]
    )
    assert sorted(found) == [("email", ["a", "b"]), ("username", ["a", "c"])]


async def test_two_new_users_with_one_email_are_both_left_out(fed: Any) -> None:
    eng, _, target = await fed(
        org(user("a", email="ann@x.example"), user("b", email="ANN@x.example"))
    )
    report = await eng.cycle()
    assert ("user", "a") not in target.holding and ("user", "b") not in target.holding
    assert target.holding[("group", "g-app")].members == ()  # type: ignore[union-attr]
    assert report.skipped == 2 and report.stale == 0


async def test_a_new_user_with_a_provisioned_users_email_is_left_out(
    fed: Any,
) -> None:
    ann = user("a", username="ann", email="ann@x.example", title="Lead")
    eng, source, target = await fed(org(ann, user("c", username="cid")))
    await eng.cycle()
    held = dict(target.holding)

    # A second directory user claims ann's email (another case) and c's username.
    newcomer = user("b", username="CID", email="Ann@X.example")
    retitled = msgspec.structs.replace(ann, title="Director")
    source.set(org(retitled, user("c", username="cid"), newcomer))
    target.calls.clear()
    with capture_logs() as logged:
        report = await eng.cycle()
    # Neither the newcomer nor any change to the provisioned users goes out.
    assert target.changes() == []
    assert target.holding == held
    assert report.stale == 2  # ann and c keep their last good state
    stale = {s["object"]: s["problems"] for s in await stale_objects(eng.store)}
    assert set(stale) == {"user:a", "user:c"}
    assert any("'b' (username 'CID')" in p and "'a'" in p for p in stale["user:a"])
    out = repr(logged)
    assert "same email" in out and "same username" in out

    # The newcomer gets an email of its own: both are provisioned, ann's change too.
    source.set(org(retitled, user("c", username="cid"), user("b", username="bea")))
    target.calls.clear()
    report = await eng.cycle()
    assert report.stale == 0
    assert ("user", "b") in target.holding
    assert target.holding[("user", "a")].title == "Director"  # type: ignore[union-attr]


async def test_a_provisioned_user_who_takes_anothers_email_keeps_its_own(fed: Any) -> None:
    ann, bob = user("a", email="ann@x.example"), user("b", email="bob@x.example")
    eng, source, target = await fed(org(ann, bob))
    await eng.cycle()
    source.set(org(ann, msgspec.structs.replace(bob, email="ANN@x.example")))
    target.calls.clear()
    report = await eng.cycle()
    assert target.changes() == []
    assert target.holding[("user", "b")].email == "bob@x.example"  # type: ignore[union-attr]
    assert report.stale == 2
