"""The mass-removal guard's hold under proportional cycles, on both store backends.

A proportional cycle (the source names what changed: ``base``/``changed``)
re-plans only some keys. The target's hold must come out as a full plan would
leave it: the held keys it did not re-plan stay held (with the hold's age,
its "since"), the re-planned ones are updated, and the operators' decisions
on keys it did not re-plan are left alone.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from daemon.config import EngineSettings
from daemon.engine import Engine
from daemon.holds import held
from daemon.model import AccountState, Snapshot, make_group
from daemon.plugins import plugin_manager
from daemon.report import CycleReport
from daemon.store import APPROVED, REJECTED, Key, Store
from tests.store.backends import StoreFactory
from tests.store.conftest import store_factory

from .support import BOUND, FedSource, RecordingTarget, engine, slot, user
from .test_proportional import BOUND as BOUND_GROUPS
from .test_proportional import ChangedSource, mutate, random_directory, state

__all__ = ["store_factory"]

#: 70 users in the one bound group; the guard trips at 25 removals and 10 %.
USERS = 70


def directory(suspended: range = range(0), title: dict[str, str] | None = None) -> Snapshot:
    users = [
        user(
            f"u{i}",
            state=AccountState.SUSPENDED if i in suspended else AccountState.ACTIVE,
            title=(title or {}).get(f"u{i}"),
        )
        for i in range(USERS)
    ]
    return Snapshot.of(users, [make_group("g-app", BOUND, [u.id for u in users])])


class World:
    """An engine on a store of one backend, fed by a source that names what changed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.source = ChangedSource(directory())
        self.target = RecordingTarget()
        self.engine = Engine(
            self.source,
            [slot(self.target, [BOUND])],
            store,
            plugin_manager(entry_points=False),
            EngineSettings(),
        )
        self.proportional = 0
        compare_changed = self.engine._compare_changed

        async def counted(*args: object) -> object:
            self.proportional += 1
            return await compare_changed(*args)  # type: ignore[arg-type]

        self.engine._compare_changed = counted  # type: ignore[method-assign]

    async def full(self, snapshot: Snapshot) -> None:
        """A cycle that compares and plans everything."""
        self.source.set(snapshot)
        self.engine.force_plan = True
        before = self.proportional
        await self.engine.cycle()
        assert self.proportional == before

    async def changed(self, snapshot: Snapshot) -> CycleReport:
        """A cycle that must take the proportional path."""
        self.source.set(snapshot)
        before = self.proportional
        report = await self.engine.cycle()
        assert self.proportional == before + 1, "the cycle was not proportional"
        return report

    async def hold(self) -> tuple[frozenset[Key], float]:
        hold = await self.store.hold("app")
        assert hold is not None, "the target has no hold"
        return hold.keys, hold.created_at

    async def listed(self) -> list[tuple[str, str, str, str | None]]:
        """``provisiond held`` (and /admin/held) as rows: key, name, reason, decision."""
        return [(o.ref, o.name, o.reason, o.decision) for o in await held(self.store, "app")]

    def sent(self) -> set[str]:
        """The object ids the target was sent anything for."""
        return {d.object_id for call in self.target.calls for d in call}


def keys(ids: range, *extra: Key) -> frozenset[Key]:
    return frozenset({("user", f"u{i}") for i in ids} | set(extra))


GROUP: Key = ("group", "g-app")


@pytest.fixture
async def world(store_factory: StoreFactory) -> AsyncIterator[World]:
    """70 users provisioned; then a full cycle holds the suspension of u40..u69."""
    w = World(await store_factory.open())
    await w.full(directory())
    assert len(w.target.holding) == USERS + 1
    await w.full(directory(suspended=range(40, 70)))
    held_keys, _ = await w.hold()
    # The 30 users and the group that would lose them.
    assert held_keys == keys(range(40, 70), GROUP)
    w.target.calls.clear()
    yield w


async def test_an_unrelated_change_leaves_the_hold_and_its_age_alone(world: World) -> None:
    listed, (held_keys, since) = await world.listed(), await world.hold()
    assert len(listed) == 31
    report = await world.changed(directory(suspended=range(40, 70), title={"u3": "Dev"}))
    # The change went out; nothing held did.
    assert world.sent() == {"u3"}
    assert await world.hold() == (held_keys, since)
    assert await world.listed() == listed
    # The report (and the held-removals gauge) count the whole hold.
    assert (report.targets["app"].planned, report.targets["app"].held) == (1, 31)
    assert (await world.engine.cycle()).result == "quiet"
    await world.changed(directory(suspended=range(40, 70), title={"u3": "Ops"}))
    assert await world.hold() == (held_keys, since)
    assert world.sent() == {"u3"}


async def test_a_new_held_removal_joins_the_hold(world: World) -> None:
    # Thirty more suspended: that trips the guard on its own, in a proportional cycle.
    await world.changed(directory(suspended=range(10, 70)))
    held_keys, _ = await world.hold()
    assert held_keys == keys(range(10, 70), GROUP)
    assert world.sent() == set()
    assert len(await world.listed()) == 61
    # And an unrelated change after it keeps all of them.
    await world.changed(directory(suspended=range(10, 70), title={"u3": "Dev"}))
    assert (await world.hold())[0] == held_keys
    assert world.sent() == {"u3"}


async def test_a_held_key_back_in_scope_leaves_the_hold(world: World) -> None:
    # u40 is active again: its held suspension is no longer wanted.
    await world.changed(directory(suspended=range(41, 70)))
    held_keys, _ = await world.hold()
    assert held_keys == keys(range(41, 70), GROUP)
    # u40 was never deactivated, so nothing goes to the target for it; the group
    # still loses 29 members, and stays held.
    assert world.sent() == set()
    listed = [ref for ref, *_ in await world.listed()]
    assert "user:u40" not in listed and len(listed) == 30


async def test_decisions_on_keys_a_proportional_cycle_did_not_plan_are_kept(
    world: World,
) -> None:
    store = world.store
    u41, u42 = ("user", "u41"), ("user", "u42")
    assert await store.decide("app", [u42], REJECTED, "ops", 100.0) == [u42]
    await world.engine.cycle()  # the undecided decision makes it a full plan
    assert world.sent() == set()
    decisions = await store.decisions("app")
    assert decisions[u42].applied and decisions[u42].decision == REJECTED
    held_keys, since = await world.hold()
    assert held_keys == keys(range(40, 70), GROUP) - {u42}  # rejected: no longer held

    # An unrelated change, planned proportionally, leaves the rejection in force...
    await world.changed(directory(suspended=range(40, 70), title={"u3": "Dev"}))
    assert world.sent() == {"u3"}
    assert u42 in await store.decisions("app")
    assert await world.hold() == (held_keys, since)
    # ...so a full plan after it still keeps u42 active, and holds the rest.
    world.target.calls.clear()
    await world.full(directory(suspended=range(40, 70), title={"u3": "Dev"}))
    assert world.sent() == set()
    assert (await store.decisions("app"))[u42].applied
    assert (await world.hold())[0] == held_keys

    # Approving one key the proportional cycles never planned sends just it.
    assert await store.decide("app", [u41], APPROVED, "ops", 200.0) == [u41]
    await world.engine.cycle()
    assert world.sent() == {"u41"}
    assert world.target.holding[u41].active is False  # type: ignore[union-attr]
    assert (await world.hold())[0] == held_keys - {u41}
    assert set(await store.decisions("app")) == {u42}
    # A proportional cycle after that: the hold, and the rejection, stay.
    world.target.calls.clear()
    await world.changed(directory(suspended=range(40, 70), title={"u3": "Ops"}))
    assert world.sent() == {"u3"}
    assert (await world.hold())[0] == held_keys - {u41}
    assert set(await store.decisions("app")) == {u42}
    assert world.target.holding[u42].active is True  # type: ignore[union-attr]


async def test_a_rejected_key_changed_again_is_planned_as_usual(world: World) -> None:
    store = world.store
    u42 = ("user", "u42")
    await store.decide("app", [u42], REJECTED, "ops", 100.0)
    await world.engine.cycle()
    held_keys, since = await world.hold()
    # u42 is active again, with a new title: the rejection lapses, the change goes out,
    # and the rest stays held as it was.
    snapshot = directory(suspended=range(40, 70))
    snapshot.users["u42"] = msgspec.structs.replace(
        snapshot.users["u42"], state=AccountState.ACTIVE, title="Back"
    )
    await world.changed(snapshot)
    assert await store.decisions("app") == {}
    assert world.sent() == {"u42"}
    assert world.target.holding[u42].title == "Back"  # type: ignore[union-attr]
    assert await world.hold() == (held_keys, since)


@pytest.mark.parametrize("seed", range(30))
async def test_with_a_guard_that_trips_a_proportional_cycle_equals_a_full_one(
    tmp_path: Path, seed: int
) -> None:
    """test_proportional's equivalence, with a guard that holds (at 2 removals and 5 %)."""
    rng = random.Random(seed)
    snap = random_directory(rng, rng.randint(5, 25))
    full_source, fast_source = FedSource(snap), ChangedSource(snap)
    full_target, fast_target = RecordingTarget(), RecordingTarget()
    (tmp_path / "full").mkdir()
    (tmp_path / "fast").mkdir()
    full = await engine(tmp_path / "full", full_source, [slot(full_target, BOUND_GROUPS, 2, 0.05)])
    fast = await engine(tmp_path / "fast", fast_source, [slot(fast_target, BOUND_GROUPS, 2, 0.05)])
    proportional = 0
    compare_changed = fast._compare_changed

    async def counted(*args: object) -> object:
        nonlocal proportional
        proportional += 1
        return await compare_changed(*args)  # type: ignore[arg-type]

    fast._compare_changed = counted  # type: ignore[method-assign]
    held = 0
    try:
        serial = [0]
        for step in range(12):
            full_report, fast_report = await full.cycle(), await fast.cycle()
            assert {n: (t.planned, t.held) for n, t in fast_report.targets.items()} == {
                n: (t.planned, t.held) for n, t in full_report.targets.items()
            }, (seed, step)
            assert await state(fast, fast_target) == await state(full, full_target), (seed, step)
            full_hold, fast_hold = await full.store.hold("app"), await fast.store.hold("app")
            assert (fast_hold and fast_hold.keys) == (full_hold and full_hold.keys), (seed, step)
            held += full_hold is not None
            snap = mutate(rng, snap, serial)
            full_source.set(snap)
            fast_source.set(snap)
        assert proportional > 0  # the fast path ran
        print(f"seed {seed}: {proportional} proportional cycles, {held} steps with a hold")
    finally:
        await full.store.aclose()  # type: ignore[attr-defined]
        await fast.store.aclose()  # type: ignore[attr-defined]
