"""``explain`` benchmark: one user explained from a store holding N users.

    python bench/explain.py 100000 [--lookups 200]

Fills a SQLite store the way a cycle would (the committed snapshot, one
target's desired and written rows, and two provisioning-log entries per
user) with the store's own commit and record, then explains random users by
username, email and id, as ``provisiond explain`` and the admin API do.
Prints the median and the 99th percentile. The directory has 100 groups of
N/100 members each plus "All Staff" (everyone), and the target binds All Staff.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio


async def _measure(n: int, lookups: int, workdir: Path) -> list[float]:
    from daemon.config import TargetSettings
    from daemon.explain import SignInRules, SignOn, explain
    from daemon.model import User, content_hash, make_group
    from daemon.store import DesiredRow, LogEntry, Result, TargetPlan
    from daemon.store.sqlite import SqliteStore

    users = [
        User(id=f"id-{i:07d}", username=f"user{i}", email=f"user{i}@corp.example",
             given_name="Given", family_name=f"Family{i}", title="Engineer")
        for i in range(n)
    ]  # fmt: skip
    ids = [u.id for u in users]
    groups = [make_group("all", "All Staff", ids)]
    groups += [make_group(f"g{g}", f"Team {g}", ids[g::100]) for g in range(100)]
    objects = [*users, *groups]
    upserts = [((("user" if isinstance(o, User) else "group"), o.id), content_hash(o), o)
               for o in objects]  # fmt: skip
    rows = [DesiredRow(k, h, o, True if k[0] == "user" else None) for k, h, o in upserts
            if k[0] == "user" or k[1] == "all"]  # fmt: skip
    log = [LogEntry(1.0, "app", r.key, "planned", "c1", ("user_added",)) for r in rows]
    store = SqliteStore(workdir / "state.db")
    await store.open()
    await store.commit("v1", upserts, [], {"app": TargetPlan(rows, [], None)}, log=log)  # type: ignore[arg-type]
    done = [Result(r.key, r.hash, True, f"r-{r.key[1]}", None, 0.0) for r in rows]
    await store.record(
        "app", done, 2.0,
        log=[LogEntry(2.0, "app", r.key, "delivered", "c1", ("user_added",), (), "POST",
                      "/Users", 201) for r in rows],
    )  # fmt: skip
    targets = [TargetSettings(name="app", kind="log", groups=["All Staff"])]
    rules = SignInRules(True, {"app": SignOn(True)})
    rng = random.Random(7)
    times: list[float] = []
    for i in range(lookups + 10):
        u = users[rng.randrange(n)]
        login = (u.username, u.email, u.id)[i % 3]
        t0 = time.perf_counter()
        e = await explain(store, login, targets, rules)
        elapsed = time.perf_counter() - t0
        assert e.user_id == u.id and e.targets[0].in_scope, e
        if i >= 10:  # warm-up not counted
            times.append(elapsed)
    await store.aclose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("users", type=int)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times = anyio.run(_measure, args.users, args.lookups, Path(tmp))
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"| {args.users:,} users | explain median {statistics.median(times) * 1000:.1f} ms "
          f"| p99 {p99 * 1000:.1f} ms | {len(times)} lookups |")  # fmt: skip


if __name__ == "__main__":
    main()
