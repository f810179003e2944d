"""``commit`` and ``record`` are all or nothing, also when they fail or are cancelled midway."""

from __future__ import annotations

import pytest

from daemon.store import Store
from tests.store.backends import StoreFactory
from tests.store.data import (
    Unencodable,
    failed,
    ok,
    plan,
    poisoned_row,
    poisoned_user,
    user,
    want,
    world,
)
from tests.store.state import read_state

TARGETS = ("a", "b", "z")
SWEPT = ("a", "b")
SMALL = {"users": 40, "groups": 4}


async def populate(store: Store) -> None:
    """A store with some of everything: written, failed and dirty rows, an approved hold, meta."""
    w = world(1, **SMALL)
    await store.commit(*w.commit_args())
    due = await store.due("a", 0.0, 1000)
    await store.record("a", [ok(r.key, r.desired_hash, f"r-{r.key[1]}") for r in due[::2]], 1.0)
    due = await store.due("b", 0.0, 1000)
    await store.record("b", [failed(r.key, r.desired_hash, "503", 60.0) for r in due[:5]], 1.0)
    await store.approve("a")
    await store.set_meta("marker", "kept")


class TestCommit:
    async def test_a_failure_in_the_last_plan_undoes_the_other_plans(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        await populate(store)
        before = await read_state(store, TARGETS, ("marker",))
        version, upserts, deletes, plans = world(2, **SMALL).commit_args()
        # Plans are written first, in order: "a" and "b" are written when "z" fails.
        bad = {**plans, "z": plan(want(user("fine")), poisoned_row())}
        with pytest.raises(store_factory.errors):
            await store.commit(version, upserts, deletes, bad)
        assert await read_state(store, TARGETS, ("marker",)) == before

    async def test_a_failure_in_the_snapshot_undoes_the_plans(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        await populate(store)
        before = await read_state(store, TARGETS, ("marker",))
        version, upserts, deletes, plans = world(2, **SMALL).commit_args()
        bad_upserts = [*upserts, (("user", "poison"), "h-poison", poisoned_user())]
        with pytest.raises(store_factory.errors):
            await store.commit(version, bad_upserts, deletes, plans)
        assert await read_state(store, TARGETS, ("marker",)) == before

    async def test_the_store_works_on_after_a_failed_commit_and_a_reopen(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        await populate(store)
        before = await read_state(store, TARGETS, ("marker",))
        version, upserts, deletes, plans = world(2, **SMALL).commit_args()
        with pytest.raises(store_factory.errors):
            await store.commit(version, upserts, deletes, {**plans, "z": plan(poisoned_row())})
        w = world(3, **SMALL)
        await store.commit(*w.commit_args())
        assert await store.committed() == w.committed
        await store.aclose()
        again = await store_factory.open()
        state = await read_state(again, TARGETS, ("marker",))
        assert state.committed == w.committed
        assert state.meta["marker"] == before.meta["marker"]
        assert state.targets["a"].index.hashes.keys() >= w.index().hashes.keys()


class TestRecord:
    async def test_a_result_the_backend_cannot_store_undoes_the_batch(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        await populate(store)
        before = await read_state(store, TARGETS, ("marker",))
        due = await store.due("b", 100.0, 1000)
        assert len(due) > 3
        results = [ok(r.key, r.desired_hash, "r") for r in due[:-1]]
        results.append(failed(due[-1].key, due[-1].desired_hash, Unencodable(), 5.0))  # type: ignore[arg-type]
        with pytest.raises(store_factory.errors):
            await store.record("b", results, 100.0)
        assert await read_state(store, TARGETS, ("marker",)) == before
        await store.record("b", results[:-1], 100.0)
        assert (await store.counts("b"))[0] == 1
