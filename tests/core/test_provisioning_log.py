"""The provisioning log as cycles write it, and operators' decisions on held keys."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import msgspec

from daemon.engine import Engine
from daemon.model import Snapshot, make_group
from daemon.store import APPROVED, REJECTED, LogEntry

from .support import BOUND, FedSource, RecordingTarget, engine, org, slot


def raw_log(tmp_path: Path) -> str:
    """Every provisioning-log row as text, read with plain sqlite3."""
    with closing(sqlite3.connect(tmp_path / "state.db")) as db:
        return repr(db.execute("SELECT * FROM provisioning_log").fetchall())


async def test_a_cycle_logs_each_plan_and_each_delivery(tmp_path: Path) -> None:
    source = FedSource(org(3))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND])])
    report = await eng.cycle()
    entries = await eng.store.log_entries(key=("user", "u1"))
    assert [(e.outcome, e.changes, e.cycle) for e in entries] == [
        ("delivered", ("user_added",), report.id),
        ("planned", ("user_added",), report.id),
    ]
    assert all(e.target == "app" and e.actor is None for e in entries)

    # A change of two attributes: their names, never their values.
    snap = org(3)
    snap.users["u1"] = msgspec.structs.replace(
        snap.users["u1"], title="Chief Secret Officer", phone="+46 70 123 45 67"
    )
    source.set(snap)
    target.fail = {"u1"}
    second = await eng.cycle()
    latest = await eng.store.log_entries(key=("user", "u1"), limit=2)
    assert [(e.outcome, e.changes, e.attributes, e.cycle) for e in latest] == [
        ("failed", ("user_changed",), ("title", "phone"), second.id),
        ("planned", ("user_changed",), ("title", "phone"), second.id),
    ]
    assert latest[0].error == "refused by the test"
    text = raw_log(tmp_path)
    assert "Chief Secret Officer" not in text and "123 45 67" not in text
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_a_quiet_cycle_logs_nothing_and_the_log_can_be_off(tmp_path: Path) -> None:
    source = FedSource(org(3))
    eng = await engine(tmp_path, source, [slot(RecordingTarget(), [BOUND])])
    await eng.cycle()
    n = len(await eng.store.log_entries(limit=1000))
    assert n == 2 * 4  # three users and the group, planned and delivered
    await eng.cycle()
    assert len(await eng.store.log_entries(limit=1000)) == n
    eng.provisioning_log = False
    source.set(org(4))
    await eng.cycle()
    assert len(await eng.store.log_entries(limit=1000)) == n
    await eng.store.aclose()  # type: ignore[attr-defined]


async def held_world(tmp_path: Path) -> tuple[Engine, FedSource, RecordingTarget]:
    """40 users provisioned, then the directory comes back empty: 41 keys held."""
    source = FedSource(org(40))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND])])
    await eng.cycle()
    # The bound group vanishes: every user leaves the scope.
    source.set(Snapshot.of(list(org(40).users.values()), []))
    report = await eng.cycle()
    assert report.targets["app"].held == 41
    return eng, source, target


async def test_held_keys_are_logged(tmp_path: Path) -> None:
    eng, _source, _target = await held_world(tmp_path)
    held = [e for e in await eng.store.log_entries(limit=1000) if e.outcome == "held"]
    assert len(held) == 41
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_approving_some_keys_releases_those_and_holds_the_rest(tmp_path: Path) -> None:
    eng, _source, target = await held_world(tmp_path)
    store = eng.store
    some = [("user", "u1"), ("user", "u2")]
    assert await store.decide("app", some, APPROVED, "ops", 100.0) == some
    target.calls.clear()
    await eng.cycle()
    # Only those two went; the other 39 (and the group) stay held, though two
    # fewer removals would still trip the guard or not.
    assert target.changes() == ["user_suspended", "user_suspended"]
    hold = await store.hold("app")
    assert hold is not None and len(hold.keys) == 39 and ("user", "u1") not in hold.keys
    assert await store.decisions("app") == {}  # spent
    # Quiet and forced cycles keep the rest held: it waits for a decision.
    eng.force_plan = True
    target.calls.clear()
    await eng.cycle()
    assert target.changes() == []
    hold = await store.hold("app")
    assert hold is not None and len(hold.keys) == 39
    await store.aclose()  # type: ignore[attr-defined]


async def test_a_pending_held_key_stays_held_below_the_threshold(tmp_path: Path) -> None:
    eng, source, target = await held_world(tmp_path)
    store = eng.store
    # Most come back: three removals would not trip the guard, but they were
    # held, and stay held until an operator decides.
    users = list(org(40).users.values())
    back = Snapshot.of(users, [make_group("g-app", BOUND, [f"u{i}" for i in range(37)])])
    source.set(back)
    target.calls.clear()
    await eng.cycle()
    assert "user_suspended" not in target.changes()
    hold = await store.hold("app")
    assert hold is not None
    assert hold.keys == {("user", "u37"), ("user", "u38"), ("user", "u39"), ("group", "g-app")}
    await store.aclose()  # type: ignore[attr-defined]


async def test_a_rejection_keeps_the_user_until_the_directory_record_changes(
    tmp_path: Path,
) -> None:
    eng, source, target = await held_world(tmp_path)
    store = eng.store
    u5 = ("user", "u5")
    assert await store.decide("app", [u5], REJECTED, "ops", 100.0) == [u5]
    await store.approve("app")  # everything else goes
    target.calls.clear()
    await eng.cycle()
    assert target.changes().count("user_suspended") == 39
    assert target.holding[u5].active  # type: ignore[union-attr]
    assert await store.hold("app") is None
    assert (await store.decisions("app"))[u5].applied
    assert await store.approved_holds() == []
    # Later plans leave u5 alone while its record is the same.
    eng.force_plan = True
    target.calls.clear()
    await eng.cycle()
    assert target.changes() == []
    # Its record changes: the rejection lapses, and the change is planned again.
    snap = Snapshot.of(
        [
            msgspec.structs.replace(u, title="new") if u.id == "u5" else u
            for u in org(40).users.values()
        ],
        [],
    )
    source.set(snap)
    target.calls.clear()
    await eng.cycle()
    assert target.changes() == ["user_changed", "user_suspended"]
    assert await store.decisions("app") == {}
    logged = [e.outcome for e in await store.log_entries(key=u5)]
    assert logged[:2] == ["delivered", "planned"] and REJECTED in logged
    await store.aclose()  # type: ignore[attr-defined]


async def test_decisions_are_logged_with_the_actor(tmp_path: Path) -> None:
    eng, _source, _target = await held_world(tmp_path)
    store = eng.store
    await store.decide("app", [("user", "u1")], REJECTED, "alice", 5.0)
    [entry] = await store.log_entries(limit=1)
    assert entry == LogEntry(5.0, "app", ("user", "u1"), REJECTED, actor="alice", id=entry.id)
    await store.aclose()  # type: ignore[attr-defined]
