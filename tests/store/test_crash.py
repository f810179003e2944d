"""SIGKILL a process that commits in a loop: the store reopens in exactly one committed state."""

from __future__ import annotations

import json
import random
import signal
import sys
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from daemon.store import Committed, Store
from tests.store.backends import StoreFactory
from tests.store.data import TARGETS, world

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 6


async def assert_world(store: Store, n: int) -> None:
    """The store holds exactly what committing worlds 1..n, and nothing else, leaves."""
    if n == 0:
        assert await store.committed() == Committed(None, {})
        for target in TARGETS:
            assert (await store.target_index(target)).hashes == {}
        return
    w = world(n)
    assert await store.committed() == w.committed
    assert await store.records(list(w.objects)) == w.objects
    for target in TARGETS:
        assert await store.target_index(target) == w.index(), f"target {target} at v{n}"
        dirty = await store.rows(target, None)
        assert {k: r.desired for k, r in dirty.items()} == w.objects
        assert all(r.written is None and r.attempts == 0 for r in dirty.values())
        hold = await store.hold(target)
        assert (None if hold is None else hold.keys) == w.hold(target)


class Child:
    """The commit loop in a child process, and the last commit it reported."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines = BufferedByteReceiveStream(process.stdout)
        self.reported = 0

    async def read_for(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.read_all()

    async def read_all(self) -> None:
        try:
            while True:
                line = (await self.lines.receive_until(b"\n", 100)).decode()
                if line != "open":
                    self.reported = int(line)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return


async def test_sigkill_leaves_exactly_one_committed_state(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    spec = json.dumps(store_factory.spec())
    argv = [sys.executable, "-m", "tests.store.commit_loop", spec, "0"]
    at = 0
    killed_after_commits = 0
    for round_ in range(ROUNDS):
        with (tmp_path / f"child-{round_}.err").open("wb") as err:
            process = await anyio.open_process(argv, cwd=ROOT, stderr=err)
        async with process:
            child = Child(process)
            with anyio.fail_after(30):
                if round_ == 0:
                    # Early: during start-up, creating the schema or the first commit.
                    await child.read_for(rng.uniform(0.0, 0.6))
                else:
                    # Once this round's first commit is in: then at a random moment.
                    while child.reported <= at:
                        await child.read_for(0.05)
                        errors = tmp_path / f"child-{round_}.err"
                        assert process.returncode is None, errors.read_text()
                    await child.read_for(rng.uniform(0.0, 0.3))
                process.send_signal(signal.SIGKILL)
                await child.read_all()
                assert await process.wait() == -signal.SIGKILL
        store = await store_factory.open()
        try:
            version = (await store.committed()).version
            n = 0 if version is None else int(version.removeprefix("v"))
            # The commit in flight when the kill came either happened, whole, or not at all.
            assert n in (child.reported, child.reported + 1), (
                f"seed {seed}, round {round_}: found v{n}, the child reported v{child.reported}"
            )
            assert n >= at
            await assert_world(store, n)
        finally:
            await store.aclose()
        assert await store_factory.integrity_problems() == []
        killed_after_commits += n > at
        at = n
    assert killed_after_commits >= ROUNDS - 1
