"""Many tasks on one store, and two store objects on one database.

Readers must only ever see committed states, whole; writes of one task must
never be swept into (or rolled back with) another task's transaction; and
two stores on one database wait for each other instead of failing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from daemon.store import Store, TargetIndex
from tests.store.backends import StoreFactory
from tests.store.data import TARGETS, World, ok, plan, poisoned_row, world

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
    async def test_tasks_never_see_or_join_each_others_transactions(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        worlds = {n: world(n) for n in range(1, 9)}
        witness = Witness(worlds)
        done = anyio.Event()
        failures = 0

        async def committer() -> None:
            nonlocal failures
            for n in sorted(worlds):
                await store.commit(*worlds[n].commit_args())
                # A commit that writes target "a" and then fails: nobody may see it.
                version, upserts, deletes, plans = world(n + 100).commit_args()
                with pytest.raises(store_factory.errors):
                    await store.commit(
                        version, upserts, deletes, {"a": plans["a"], "z": plan(poisoned_row())}
                    )
                failures += 1
            done.set()

        written: list[tuple[str, str]] = []

        async def setter(i: int) -> None:
            # Writes all along, so some land while another task's commit is open.
            j = 0
            while not done.is_set():
                await store.set_meta(f"task-{i}-{j}", f"{i}/{j}")
                written.append((f"task-{i}-{j}", f"{i}/{j}"))
                j += 1
                await anyio.sleep(0.001)

        async def reader() -> None:
            while not done.is_set():
                await witness.look(store)

        async def deliverer() -> None:
            while not done.is_set():
                rows = await store.due("b", time.time(), 50)
                await store.record("b", [ok(r.key, r.desired_hash, "r") for r in rows], time.time())
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(committer)
            for i in range(20):
                tg.start_soon(setter, i)
            for _ in range(3):
                tg.start_soon(reader)
            tg.start_soon(deliverer)

        assert failures == len(worlds) and witness.reads > 0 and len(written) > 100
        lost = [k for k, v in written if await store.get_meta(k) != v]
        assert lost == [], f"{len(lost)} of {len(written)} writes lost"
        last = worlds[max(worlds)]
        assert await store.committed() == last.committed
        assert await store.target_index("a") == last.index()

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


class TestTwoStoresOneDatabase:
    async def test_two_stores_opening_a_new_database_at_once(
        self, store_factory: StoreFactory
    ) -> None:
        # Two processes starting together on a new state directory both migrate it.
        for i in range(25):
            factory = await store_factory.another(f"new-{i}")
            try:
                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(factory.open)
                assert await factory.schema_version() == factory.latest_version
            finally:
                await factory.aclose()

    async def test_two_connections_wait_for_each_other(self, store_factory: StoreFactory) -> None:
        one, two = await store_factory.open(), await store_factory.open()
        worlds = {n: world(n) for n in range(1, 11)}
        witness = Witness(worlds)
        done = anyio.Event()

        async def committer() -> None:
            for n in sorted(worlds):
                await one.commit(*worlds[n].commit_args())
            done.set()

        async def writer() -> None:
            for i in range(200):
                await two.set_meta(f"two-{i}", str(i))
                if i % 20 == 0:
                    rows = await two.due("b", time.time(), 20)
                    await two.record("b", [ok(r.key, r.desired_hash) for r in rows], time.time())

        async def reader() -> None:
            while not done.is_set():
                await witness.look(two)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(committer)
            tg.start_soon(writer)
            tg.start_soon(reader)

        assert witness.reads > 0
        assert [await one.get_meta(f"two-{i}") for i in range(200)] == [str(i) for i in range(200)]
        for s in (one, two):
            assert await s.committed() == worlds[10].committed

    async def test_a_second_process_commits_while_this_one_reads_and_writes(
        self, store_factory: StoreFactory, tmp_path: Path
    ) -> None:
        last = 60
        witness = Witness({n: world(n) for n in range(1, last + 1)})
        store = await store_factory.open()
        spec = json.dumps(store_factory.spec())
        written = 0
        argv = [sys.executable, "-m", "tests.store.commit_loop", spec, str(last)]
        with (tmp_path / "child.err").open("w+b") as err:
            async with await anyio.open_process(
                argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
            ) as child:
                with anyio.fail_after(60):
                    while child.returncode is None:
                        await witness.look(store)
                        for _ in range(10):
                            await witness.snapshot(store)
                        await store.set_meta(f"parent-{written}", "x")
                        written += 1
                    await child.wait()
            err.seek(0)
            assert child.returncode == 0, err.read().decode()
        assert witness.reads > 0 and written > 0
        assert await store.committed() == witness.worlds[last].committed
        for i in range(written):
            assert await store.get_meta(f"parent-{i}") == "x"
