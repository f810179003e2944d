"""slapd → ldap source → the real Engine and SqliteStore → the log target and a recording target.

One directory lifecycle: the first full sync, a change picked up by an
incremental poll, a deletion caught by the next incremental poll, and a lock
that turns into a deactivation downstream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.config import EngineSettings, TargetSettings
from daemon.engine import Engine, TargetSlot
from daemon.model import AccountState
from daemon.plugins import plugin_manager
from daemon.runtime import PluginContext
from daemon.screening import stale_objects
from daemon.sources.ldap import LdapSource
from daemon.store.sqlite import SqliteStore
from daemon.targets.log import LogOptions, LogTarget
from tests.core.support import RecordingTarget
from tests.ldap import seed
from tests.ldap.slapd import Slapd
from tests.ldap.test_increments_stay_whole import rename, settle

BOUND = "staff"  # alice, bob (through engineering) and carol (locked)


@dataclass
class World:
    engine: Engine
    source: LdapSource
    recording: RecordingTarget
    journal: Path

    def journal_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.journal.read_text().splitlines()]

    def journal_state(self) -> dict[str, dict[str, Any]]:
        """What the log target holds, replayed from its journal: key -> record."""
        held: dict[str, dict[str, Any]] = {}
        for entry in self.journal_entries():
            if entry["op"] == "delete":
                held.pop(entry["key"])
            else:
                held[entry["key"]] = entry["record"]
        return held

    async def cycle(self, expect: str = "ok") -> None:
        self.recording.calls.clear()
        report = await self.engine.cycle()
        assert report.result == expect, report.error


@pytest.fixture
async def world(
    tmp_path: Path, context: PluginContext, make_source: Callable[..., LdapSource]
) -> AsyncIterator[World]:
    source = make_source(full_read_every=3)
    journal = tmp_path / "journal.jsonl"
    log_target = LogTarget("audit", LogOptions(journal=journal), context)
    recording = RecordingTarget("app")
    slots = [
        TargetSlot(TargetSettings(name="audit", kind="log", groups=[BOUND]), log_target),
        TargetSlot(TargetSettings(name="app", kind="recording", groups=[BOUND]), recording),
    ]
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    engine = Engine(source, slots, store, plugin_manager(entry_points=False), EngineSettings())
    try:
        yield World(engine, source, recording, journal)
    finally:
        await store.aclose()
        await source.aclose()


def read_kind(world: World) -> str:
    """What the source's last fetch was (a call, so that mypy does not narrow it)."""
    return world.source.last_read or ""


def held_users(world: World) -> dict[str, dict[str, Any]]:
    return {r["username"]: r for k, r in world.journal_state().items() if k.startswith("user:")}


async def test_directory_lifecycle_flows_through_the_core(world: World, slapd: Slapd) -> None:
    # 1. Initial full sync: every member of the bound group reaches both targets.
    await world.cycle()
    assert read_kind(world) == "full"
    users = held_users(world)
    # carol was locked before the first sync: never created downstream.
    assert set(users) == {"alice", "bob"}
    assert users["alice"]["manager"] == users["bob"]["id"]
    assert {k for k in world.recording.holding if k[0] == "user"} == {
        ("user", u["id"]) for u in users.values()
    }
    mark = world.source._state.mark if world.source._state else None
    assert mark

    # 2. A modification is picked up by an incremental poll, proved by its filter.
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nreplace: title\n"
        "title: Principal Engineer\n"
    )
    await world.cycle()
    assert read_kind(world) == "incremental"
    # After the ids-only reads that find deletions (users, then groups).
    assert world.source.last_filters[2] == (
        f"(&(objectClass=inetOrgPerson)(modifyTimestamp>={mark}))"
    )
    assert held_users(world)["alice"]["title"] == "Principal Engineer"
    assert world.recording.changes() == ["user_changed"]

    # 3. A deletion: the next incremental poll sees it (its ids-only read).
    bob_id = held_users(world)["bob"]["id"]
    slapd.modify(f"dn: uid=bob,{seed.PEOPLE}\nchangetype: delete\n")
    await world.cycle()
    assert read_kind(world) == "incremental"
    assert "bob" not in held_users(world)
    assert {"op": "delete", "key": f"user:{bob_id}"} in world.journal_entries()
    assert "user_removed" in world.recording.changes()
    assert ("user", bob_id) not in world.recording.holding
    # The next full read finds nothing the increment missed.
    await world.cycle(expect="quiet")
    assert read_kind(world) == "full"
    assert "(modifyTimestamp>=" not in world.source.last_filters[0]

    # 4. Locking a user suspends them downstream: a deactivation, not a removal,
    # and they leave the target's group (which lists only active users), as
    # carol, locked before the first sync, was never in it.
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nadd: pwdAccountLockedTime\n"
        "pwdAccountLockedTime: 000001010000Z\n"
    )
    await world.cycle()
    assert read_kind(world) == "incremental"
    assert sorted(world.recording.changes()) == ["members_removed", "user_suspended"]
    alice_id = held_users(world)["alice"]["id"]
    assert held_users(world)["alice"]["state"] == "suspended"
    held = world.recording.holding[("user", alice_id)]
    assert held.state is AccountState.SUSPENDED  # type: ignore[union-attr]
    (staff,) = [v for k, v in world.recording.holding.items() if k[0] == "group"]
    assert alice_id not in staff.members  # type: ignore[union-attr]

    # Nothing more changed: the next poll is quiet and sends nothing.
    await world.cycle(expect="quiet")
    assert world.recording.calls == []


async def test_directory_down_changes_nothing_downstream(world: World, slapd: Slapd) -> None:
    await world.cycle()
    before = world.journal.read_text()
    slapd.stop()
    world.recording.calls.clear()
    report = await world.engine.cycle()
    assert report.result == "failed"
    assert "cannot connect" in (report.error or "")
    assert world.journal.read_text() == before
    assert world.recording.calls == []


async def test_two_entries_with_one_mail_are_not_both_planned(world: World, slapd: Slapd) -> None:
    await world.cycle()
    alice = held_users(world)["alice"]
    journal = world.journal.read_text()
    # A second entry, in scope, with alice's mail in another case.
    slapd.modify(
        seed.person("eve", extra="title: Intern").replace(
            "mail: eve@example.org", "mail: ALICE@Example.org"
        )
        + f"dn: cn=engineering,{seed.GROUPS}\nchangetype: modify\nadd: member\n"
        f"member: uid=eve,{seed.PEOPLE}\n"
    )
    world.recording.calls.clear()
    with structlog.testing.capture_logs() as logged:
        report = await world.engine.cycle()
    # Neither target hears of eve, and alice is not taken over.
    assert world.recording.changes() == []
    assert world.journal.read_text() == journal
    assert held_users(world)["alice"] == alice
    conflict = [e for e in logged if e["event"] == "directory record skipped"]
    conflict = [e for e in conflict if e["field"] == "email"]
    assert len(conflict) == 2
    eve_id = next(e["record"] for e in conflict if e["record"] != alice["id"])
    for event in conflict:
        assert event["where"] == "ldap source"
        assert "'alice'" in event["reason"] and "'eve'" in event["reason"]
        assert "same email" in event["reason"]
    assert report.stale == 1  # alice keeps her last good state
    (stale,) = await stale_objects(world.engine.store)
    assert stale["object"] == f"user:{alice['id']}"

    # eve gets her own mail: now she is provisioned, and nothing is stale.
    slapd.modify(
        f"dn: uid=eve,{seed.PEOPLE}\nchangetype: modify\nreplace: mail\nmail: eve@example.org\n"
    )
    report = await world.engine.cycle()
    assert report.stale == 0
    assert held_users(world)["eve"]["id"] == eve_id
    assert held_users(world)["alice"] == alice


async def test_an_entry_that_becomes_invalid_keeps_its_last_good_state(
    world: World, slapd: Slapd
) -> None:
    await world.cycle()
    alice = held_users(world)["alice"]
    held = dict(world.recording.holding)
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nreplace: mail\nmail: alice.example.org\n"
    )
    world.recording.calls.clear()
    report = await world.engine.cycle()
    assert world.recording.changes() == []
    assert world.recording.holding == held
    assert held_users(world)["alice"] == alice
    assert report.stale == 1
    # A full read (within the next polls) sees the same.
    for _ in range(3):
        world.recording.calls.clear()
        await world.engine.cycle()
        if read_kind(world) == "full":
            break
    assert read_kind(world) == "full"
    assert world.recording.changes() == []
    (stale,) = await stale_objects(world.engine.store)
    assert stale["object"] == f"user:{alice['id']}"
    assert "is not an email address" in stale["problems"][0]


async def test_renaming_a_nested_group_changes_nothing_downstream(
    world: World, slapd: Slapd
) -> None:
    """refint rewrites staff's member value, not staff's modifyTimestamp (see tests/ldap)."""
    settle(slapd)
    await world.cycle()
    held = dict(world.recording.holding)
    rename(slapd, f"cn=engineering,{seed.GROUPS}", "cn=platform")
    world.recording.calls.clear()
    report = await world.engine.cycle()
    assert report.result != "failed", report.error
    assert read_kind(world) == "incremental"
    assert world.recording.changes() == []  # no user_suspended, no member removed
    assert world.recording.holding == held
    assert {u["username"] for u in held_users(world).values()} == {"alice", "bob"}
