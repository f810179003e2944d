"""Upgrading an installation of provisiond 0.1: its state directory comes up under this code.

``fixtures/`` holds what provisiond 0.1 (commit 0988576) left after provisioning
a small directory into scim2-server (``make_fixture.py`` says exactly how):
the core store ``state.db`` at schema version 2, the AlexisHR target's private
mirror file ``alexishr-alexishr.db`` (remote ids, the bodies last written, one
user deactivated and waiting for its hard-delete grace), the directory it
provisioned, and every resource the server held, with its id.

Here a scim2-server is loaded with those resources (same ids), the state
directory is copied, and this code's engine and AlexisHR target start on it.
The promise (issue 10, "Upgrading an existing installation"): the mirror is
imported into the store once, named in the log and left in place; nothing is
lost and nothing is provisioned twice; the next cycle and a reconciliation
send the application nothing, but for one rule that changed since 0.1: a
target's groups list only its active users, so the user 0.1 deactivated
while leaving it in Staff leaves Staff (one PATCH).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.model import Snapshot
from daemon.sources.file import FileSource
from daemon.store import Deactivation, Link
from daemon.store.sqlite import MIGRATIONS, SqliteStore
from daemon.targets.scim.links import LEGACY_IMPORTED, Links
from tests.alexishr_scim.world import World, dump, world
from tests.upgrade.loaded_server import RESOURCES, LoadedServer, running_loaded_scim_server

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
TARGET = MANIFEST["target"]
LEGACY = f"alexishr-{TARGET}.db"
REMOVED = MANIFEST["removed_user"]
#: Suspended (deactivated in the application) while provisiond 0.1 ran; still in Staff.
SUSPENDED = "u-11"
GRACE = MANIFEST["hard_delete_after"]
#: The core store's schema version in provisiond 0.1.
OLD_SCHEMA = 2


class Clock:
    """The daemon's clock, resumed where provisiond 0.1 stopped (the store holds its times)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


LegacyRows = tuple[dict[tuple[str, str], Link], dict[str, Deactivation]]


def read_mirror(path: Path) -> LegacyRows:
    """The old mirror file's rows, read with plain sqlite3 (not the code under test)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        objects = {
            (kind, oid): Link(remote_id, json.loads(body))
            for kind, oid, remote_id, body in db.execute(
                "SELECT kind, object_id, remote_id, body FROM objects"
            )
        }
        doomed = {
            oid: Deactivation(remote_id, float(at))
            for oid, remote_id, at in db.execute(
                "SELECT object_id, remote_id, deactivated_at FROM doomed"
            )
        }
    return objects, doomed


def imported(
    objects: dict[tuple[str, str], Link], doomed: dict[str, Deactivation]
) -> dict[tuple[str, str], Link]:
    """What the store must hold: the old rows, with the users pending deletion deactivated.

    0.1 kept a removed user's last upserted body (active) while its deletion
    waited, though it had deactivated the user.
    """
    out = dict(objects)
    for object_id in doomed:
        link = out[("user", object_id)]
        assert link.body["active"] is True
        out[("user", object_id)] = Link(link.remote_id, {**link.body, "active": False})
    return out


def schema_version(path: Path) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resource_ids(url: str) -> dict[str, set[str]]:
    return {name: {r["id"] for r in dump(url, name)} for name in RESOURCES}


async def directory() -> Snapshot:
    path = FIXTURES / "directory.json"
    snapshot = await FileSource(path=path, format="json", where=str(path)).fetch(None)
    assert snapshot is not None and not snapshot.skipped
    return snapshot


@pytest.fixture
def scim_dump() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "scim-resources.json").read_text())
    return loaded


@pytest.fixture
def server(scim_dump: dict[str, Any]) -> Iterator[LoadedServer]:
    with running_loaded_scim_server(scim_dump) as loaded:
        yield loaded


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A copy of the state directory provisiond 0.1 left (the world opens ``tmp_path/state``)."""
    state = tmp_path / "state"
    shutil.copytree(FIXTURES / "state", state)
    return state


def started(tmp_path: Path, snapshot: Snapshot, server: LoadedServer, clock: Clock) -> Any:
    """This code's engine and AlexisHR target on the state directory, as the old code ran."""
    return world(
        tmp_path,
        snapshot,
        server=server.url,
        clock=clock,
        bound=MANIFEST["bound_groups"],
        hard_delete_after=GRACE,
    )


def imports(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if "private state file" in e["event"]]


async def stored_links(w: World) -> LegacyRows:
    state = await w.engine.store.target_links(TARGET)
    return dict(state.links), dict(state.deactivations)


def test_the_fixture_is_what_provisiond_0_1_left(
    scim_dump: dict[str, Any], server: LoadedServer, state_dir: Path
) -> None:
    # Cleanly closed: no -wal file (even a read-only open would leave one, so the
    # tests read copies only).
    assert sorted(p.name for p in (FIXTURES / "state").iterdir()) == [LEGACY, "state.db"]
    state = state_dir
    assert schema_version(state / "state.db") == OLD_SCHEMA
    objects, doomed = read_mirror(state / LEGACY)
    assert set(doomed) == {REMOVED}
    groups = [link for (kind, _), link in objects.items() if kind == "group"]
    assert len(groups) == len(MANIFEST["bound_groups"])
    # 0.1 kept no directory ids of members: reconciliation must use the remote ids kept.
    assert all("member_ids" not in g.body and g.body["members"] for g in groups)
    on_server = {r["id"] for name in RESOURCES for r in scim_dump[name]}
    assert {link.remote_id for link in objects.values()} <= on_server
    # The loaded server answers with exactly the resources dumped (ids, meta and all).
    for name in RESOURCES:
        served = json.loads(json.dumps(dump(server.url, name)).replace(server.url, ""))
        dumped = json.loads(json.dumps(scim_dump[name]).replace(scim_dump["base_url"], ""))
        assert sorted(served, key=lambda r: r["id"]) == sorted(dumped, key=lambda r: r["id"])


async def test_an_installation_of_0_1_comes_up_and_sends_nothing(
    tmp_path: Path, state_dir: Path, server: LoadedServer
) -> None:
    legacy = state_dir / LEGACY
    before = digest(legacy)
    objects, doomed = read_mirror(legacy)
    ids = resource_ids(server.url)
    snapshot = await directory()
    clock = Clock(MANIFEST["captured_at"] + 60)

    with capture_logs() as logs:
        async with started(tmp_path, snapshot, server, clock) as w:
            report = await w.engine.cycle()
            first = w.writes()
            store = w.engine.store
            assert isinstance(store, SqliteStore)
            async with store.db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            assert row is not None and row[0] == len(MIGRATIONS) > OLD_SCHEMA

            # Every remote id and body, and the pending deletion, are in the store now
            # (Staff's as sent just now: see below).
            links, pending = await stored_links(w)
            expected = imported(objects, doomed)
            staff = expected.pop(("group", "g-staff"))
            assert {k: v for k, v in links.items() if k != ("group", "g-staff")} == expected
            assert pending == doomed
            assert await store.target_meta(TARGET, LEGACY_IMPORTED) == str(legacy)
            suspended = objects[("user", SUSPENDED)].remote_id
            assert links[("group", "g-staff")].remote_id == staff.remote_id
            assert sorted(links[("group", "g-staff")].body["members"]) == sorted(
                m for m in staff.body["members"] if m != suspended
            )

            # The first cycle sends one thing only: u-11, suspended (deactivated) under
            # 0.1, leaves Staff, as a target's groups list only its active users now.
            # Nothing new besides, nothing twice.
            assert first == [f"PATCH /Groups/{staff.remote_id}"], first
            assert report.result != "failed" and report.targets[TARGET].failed == 0
            assert report.targets[TARGET].dirty == 1  # the deletion still in its grace
            mark = len(w.proxy.log)
            w.engine.force_plan = True  # as after a reload: every target planned again
            await w.engine.cycle()
            assert w.writes(mark) == []

            # Reconciliation compares every body and member list with the server and
            # finds them equal (groups from 0.1 have only the remote ids of members).
            mark = len(w.proxy.log)
            assert await w.target.reconcile() == {}
            assert w.writes(mark) == []
            removed = w.raw("GET", f"/Users/{doomed[REMOVED].remote_id}")
            assert removed["active"] is False  # not reactivated while its deletion waits
            read = {(r.method, r.path.rstrip("/").rsplit("/", 1)[-1]) for r in w.proxy.log[mark:]}
            assert {("GET", "Users"), ("GET", "Groups")} <= read
            assert resource_ids(server.url) == ids

            # The grace period kept in the old file still runs: the user is deleted
            # when it ends (without it, the user would only be deactivated again).
            clock.now = doomed[REMOVED].at + GRACE + 1
            mark = len(w.proxy.log)
            report = await w.engine.cycle()
            assert w.writes(mark) == [f"DELETE /Users/{doomed[REMOVED].remote_id}"]
            assert report.targets[TARGET].dirty == 0
            links, pending = await stored_links(w)
            assert ("user", REMOVED) not in links and pending == {}

    warnings = imports(logs)
    assert len(warnings) == 1, warnings
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["file"] == str(legacy) and warnings[0]["target"] == TARGET
    assert warnings[0]["objects"] == len(objects)
    assert legacy.exists() and digest(legacy) == before  # left in place, untouched

    # A second start uses the store alone: the file is not imported again (which
    # would bring the deleted user's link and pending deletion back).
    with capture_logs() as logs:
        async with started(tmp_path, snapshot, server, clock) as w:
            await w.engine.cycle()
            assert w.writes() == []
            links, pending = await stored_links(w)
            kept = {k: v for k, v in objects.items() if k != ("user", REMOVED)}
            assert {k: v for k, v in links.items() if k != ("group", "g-staff")} == {
                k: v for k, v in kept.items() if k != ("group", "g-staff")
            }
            assert suspended not in links[("group", "g-staff")].body["members"]
            assert pending == {}
            assert await w.target.reconcile() == {}
            assert w.writes() == []
    assert imports(logs) == []
    assert legacy.exists() and digest(legacy) == before
    assert resource_ids(server.url) == {
        "Users": ids["Users"] - {doomed[REMOVED].remote_id},
        "Groups": ids["Groups"],
    }


def killed_mid_write(state_dir: Path, killed: Path) -> dict[str, Any]:
    """A copy of ``state_dir`` as 0.1 left it when killed just after a mirror write.

    The write changes ``u-03``'s body (returned) and clears the pending
    deletion; it is only in the -wal file.
    """
    legacy = state_dir / LEGACY
    killed.mkdir()
    with closing(sqlite3.connect(legacy, isolation_level=None)) as db:
        db.execute("PRAGMA wal_autocheckpoint=0")
        (body,) = db.execute(
            "SELECT body FROM objects WHERE kind = 'user' AND object_id = 'u-03'"
        ).fetchone()
        changed: dict[str, Any] = {**json.loads(body), "title": "Staff Engineer"}
        db.execute(
            "UPDATE objects SET body = ? WHERE kind = 'user' AND object_id = 'u-03'",
            (json.dumps(changed),),
        )
        db.execute("DELETE FROM doomed")
        # The process dies here: the database file, its -wal and -shm stay as they are.
        for path in state_dir.iterdir():
            shutil.copy2(path, killed / path.name)
    assert (killed / f"{LEGACY}-wal").stat().st_size > 0
    only_main = killed.parent / "only-main.db"
    shutil.copy2(killed / LEGACY, only_main)
    assert read_mirror(only_main)[0][("user", "u-03")].body["title"] == "Backend Engineer"
    return changed


async def test_a_mirror_left_by_a_killed_0_1_daemon_is_read_with_its_wal(
    state_dir: Path, tmp_path: Path
) -> None:
    """0.1 wrote the mirror in WAL mode: after a kill its last writes are in the -wal file."""
    killed = tmp_path / "killed"
    changed = killed_mid_write(state_dir, killed)
    store = SqliteStore(killed / "state.db")
    await store.open()
    try:
        links = Links(TARGET, legacy_file=killed / LEGACY)
        await links.load(store)
        link = links.get("user", "u-03")
        assert link is not None and link.body == changed
        assert links.doomed == {}
        state = await store.target_links(TARGET)
        assert state.links[("user", "u-03")].body == changed and state.deactivations == {}
    finally:
        await store.aclose()
