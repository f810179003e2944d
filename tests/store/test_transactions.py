"""``commit`` and ``record`` are all or nothing, also when they fail or are cancelled midway."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Iterator

import anyio
import anyio.lowlevel
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
from tests.store.state import State, read_state

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


# -- cancellation -------------------------------------------------------------------


async def run_cancelled_after(
    turns: int, seconds: float, call: Callable[[], Awaitable[None]]
) -> bool:
    """Run ``call``, cancelled after ``turns`` scheduler turns and ``seconds``; if it returned."""
    returned = False
    async with anyio.create_task_group() as tg:

        async def cancel() -> None:
            for _ in range(turns):
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(seconds)
            tg.cancel_scope.cancel()

        tg.start_soon(cancel)
        await call()
        returned = True
        tg.cancel_scope.cancel()
    return returned


def cancel_points() -> Iterator[tuple[int, float]]:
    """Ever later points to cancel at: turn by turn first, then by time, however slow the disk."""
    turns = 0
    while turns < 60:
        yield turns, 0.0
        turns += 1 + turns // 8
    seconds = 0.001
    while seconds < 20:
        yield turns, seconds
        seconds *= 1.5


def timeless(state: State) -> State:
    """``state`` without the wall-clock times a store stamps (they differ between two stores)."""
    targets = {
        name: dataclasses.replace(
            t, hold=None if t.hold is None else dataclasses.replace(t.hold, created_at=0.0)
        )
        for name, t in state.targets.items()
    }
    meta = {**state.meta, "snapshot_committed_at": None}
    return dataclasses.replace(state, targets=targets, meta=meta)


async def sweep(
    store: Store, reference: Store, step: Callable[[Store, int], Awaitable[None]]
) -> tuple[int, int]:
    """Cancel ``step`` at ever later points until it keeps completing.

    ``reference`` gets every step uncancelled. After each cancelled attempt
    the store must hold either its state before the step or exactly the
    reference's state after it. If the step left nothing behind it is run
    again, uncancelled, and must then succeed: the store is still usable.
    Returns how many attempts were interrupted before they took effect, and
    how many ran to the end.
    """
    undone = completed = streak = 0
    before = timeless(await read_state(store, SWEPT))
    for i, (turns, seconds) in enumerate(cancel_points(), start=1):
        if streak == 3:
            break
        returned = await run_cancelled_after(turns, seconds, functools.partial(step, store, i))
        await step(reference, i)
        after = timeless(await read_state(store, SWEPT))
        expected = timeless(await read_state(reference, SWEPT))
        if after == before:
            assert not returned, f"step {i} returned but changed nothing"
            undone += 1
            await step(store, i)
            after = timeless(await read_state(store, SWEPT))
        assert after == expected, f"step {i}, cancelled at {turns} turns, {seconds} s: a mix"
        before = after
        completed += returned
        streak = streak + 1 if returned else 0
    return undone, completed


class TestCancellation:
    async def test_a_cancelled_commit_is_all_or_nothing_and_the_store_stays_usable(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        reference = await (await store_factory.another("reference")).open()
        try:
            for s in (store, reference):
                await populate(s)

            async def step(s: Store, i: int) -> None:
                await s.commit(*world(i + 1, **SMALL).commit_args())

            undone, completed = await sweep(store, reference, step)
        finally:
            await reference.aclose()
        assert undone > 0 and completed > 0

    async def test_a_cancelled_record_is_all_or_nothing_and_the_store_stays_usable(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        reference = await (await store_factory.another("reference")).open()
        try:
            for s in (store, reference):
                await populate(s)
                await s.commit(*world(2, **SMALL).commit_args())
            due = await reference.due("a", 0.0, 1000)

            async def step(s: Store, i: int) -> None:
                # Every step changes every row: a failure counts an attempt.
                results = [
                    ok(r.key, r.desired_hash, f"r{i}")
                    if (n + i) % 3 == 0
                    else failed(r.key, r.desired_hash, f"e{i}", float(i), f"r{i}")
                    for n, r in enumerate(due)
                ]
                await s.record("a", results, float(i))

            undone, completed = await sweep(store, reference, step)
        finally:
            await reference.aclose()
        assert undone > 0 and completed > 0
