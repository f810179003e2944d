"""A child process for the sign-in race tests: claims, takes and fails against the parent.

``python -m tests.store.signin_race SPEC N`` opens the store that the JSON
``SPEC`` describes, prints ``open``, waits for a line on stdin, then for each
``i`` below ``N`` claims ``claim-i``, takes the parked handle ``handle-i`` and
records one failure of ``shared``, as fast as it can. It prints one JSON
line: the indexes it claimed and the indexes it took.
"""

from __future__ import annotations

import json
import sys

import anyio

from tests.store.backends import from_spec

NOW = 1_000.0


async def race(store: object, n: int) -> dict[str, list[int]]:
    """The work both racers do; ``store`` is a :class:`daemon.store.Store`."""
    claimed: list[int] = []
    taken: list[int] = []
    for i in range(n):
        if await store.claim(f"claim-{i}", NOW + 60, NOW, 10_000):  # type: ignore[attr-defined]
            claimed.append(i)
        if await store.take_parked(f"handle-{i}", NOW) is not None:  # type: ignore[attr-defined]
            taken.append(i)
        await store.add_failures(["shared"], NOW, NOW + 60)  # type: ignore[attr-defined]
    return {"claimed": claimed, "taken": taken}


async def main(spec: dict[str, str], n: int) -> None:
    factory = from_spec(spec)
    store = await factory.open()
    try:
        print("open", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        print(json.dumps(await race(store, n)), flush=True)
    finally:
        await factory.aclose()


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]), int(sys.argv[2]))
