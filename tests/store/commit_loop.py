"""A child process for the crash and two-process tests: commits numbered worlds in a loop.

``python -m tests.store.commit_loop SPEC LAST`` opens the store that the JSON
``SPEC`` describes (see :meth:`tests.store.backends.StoreFactory.spec`),
resumes after the version committed there, and commits
:func:`tests.store.data.world` ``n`` for each next ``n`` up to ``LAST`` (0:
until killed). It prints ``open`` once the store is open, then each ``n``
once its commit has returned.
"""

from __future__ import annotations

import json
import sys

import anyio

from tests.store.backends import from_spec
from tests.store.data import world


async def main(spec: dict[str, str], last: int) -> None:
    factory = from_spec(spec)
    store = await factory.open()
    print("open", flush=True)
    committed = await store.committed()
    n = 0 if committed.version is None else int(committed.version.removeprefix("v"))
    try:
        while last == 0 or n < last:
            n += 1
            await store.commit(*world(n).commit_args())
            print(n, flush=True)
    finally:
        await factory.aclose()


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]), int(sys.argv[2]))
