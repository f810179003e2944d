"""Many tasks on one store, and two store objects on one database.

Readers must only ever see committed states, whole; writes of one task must
never be swept into (or rolled back with) another task's transaction; and
two stores on one database wait for each other instead of failing.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel

from daemon.store import Store, TargetIndex
from tests.store.data import TARGETS, World, ok, world

ROOT = Path(__file__).resolve().parents[2]


class Witness:
    """Checks that what a reader sees is one of the states written so far."""

    def __init__(self, worlds: dict[int, World]) -> None:
        self.worlds = worlds
        self.indexes = {n: w.index() for n, w in worlds.items()}
        self.reads = 0

    async def look(self, store: Store) -> None:
        await self.snapshot(store)
        index = await store.target_index("a")
        assert index == TargetIndex() or any(index == i for i in self.indexes.values()), (
            "target a's plan is not one that was committed"
        )
        self.reads += 1

    async def snapshot(self, store: Store) -> None:
        committed = await store.committed()
        if committed.version is None:
            assert committed.hashes == {}
        else:
            n = int(committed.version.removeprefix("v"))
            assert committed == self.worlds[n].committed, f"a mix of states at {committed.version}"
        self.reads += 1


class TestOneStoreManyTasks:
    async def test_concurrent_records_of_different_targets_all_land(self, store: Store) -> None:
        w = world(1)
        await store.commit(*w.commit_args())

        async def deliver(target: str) -> None:
            while rows := await store.due(target, 0.0, 7):
                results = [ok(r.key, r.desired_hash, f"{target}-{r.key[1]}") for r in rows]
                await store.record(target, results, 0.0)

        async with anyio.create_task_group() as tg:
            for target in TARGETS:
                tg.start_soon(deliver, target)
        for target in TARGETS:
            assert await store.counts(target) == (0, 0)
            rows = await store.rows(target, list(w.hashes))
            assert {r.remote_id for r in rows.values()} == {f"{target}-{k[1]}" for k in w.hashes}
