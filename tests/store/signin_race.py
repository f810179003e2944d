"""A child process for the sign-in race tests: claims, takes and fails against the parent.

``python -m tests.store.signin_race SPEC N`` opens the store that the JSON
``SPEC`` describes, prints ``open``, waits for a line on stdin, then for each
``i`` from ``N - 1`` down to 0 claims ``claim-i``, takes the parked handle
``handle-i`` and records one failure of ``shared``, as fast as it can (the
parent goes up from 0, so the two meet and race in the middle, whichever
started first). It prints one JSON line: the indexes it claimed and took.
"""

from __future__ import annotations

import json
import sys

import anyio

from tests.store.backends import from_spec

NOW = 1_000.0


async def race(store: object, n: int, *, down: bool = False) -> dict[str, list[int]]:
    """The work both racers do; ``store`` is a :class:`daemon.store.Store`."""
    claimed: list[int] = []
    taken: list[int] = []
    for i in reversed(range(n)) if down else range(n):
        if await store.claim(f"claim-{i}", NOW + 60, NOW, 10_000):  # type: ignore[attr-defined]
            claimed.append(i)
        if await store.take_parked(f"handle-{i}", NOW) is not None:  # type: ignore[attr-defined]
            taken.append(i)
        await store.add_failures(["shared"], NOW, NOW + 60)  # type: ignore[attr-defined]
        # A gap, as between requests: back to back, one SQLite writer can
        # starve the other's busy handler until it has done everything.
        await anyio.sleep(0.002)
    return {"claimed": claimed, "taken": taken}


async def main(spec: dict[str, str], n: int) -> None:
    factory = from_spec(spec)
    store = await factory.open()
    try:
        print("open", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        print(json.dumps(await race(store, n, down=True)), flush=True)
    finally:
        await factory.aclose()


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]), int(sys.argv[2]))
