"""SCIM provisioning benchmark: 10,000 users into scim2-server over loopback.

    python bench/scim_provision.py [--users 10000] [--concurrency 8]

Measures, in one run and against fresh scim2-server processes:

1. raw capacity: a plain aiohttp client POSTing the same user bodies at the
   same concurrency, once before and once after (2) so a change in the load
   other processes put on the machine shows instead of skewing the ratio;
2. provisiond: the engine, the SQLite store and the AlexisHR target doing the
   initial provisioning: the users (comparable with the raw load), then the
   bound group with every member (which the raw load does not do), timed apart;
3. the no-change cycle time with every user provisioned.

Prints a Markdown table with the machine, the date and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import EngineSettings, GuardSettings, TargetSettings
from daemon.engine import Engine, TargetSlot
from daemon.model import Snapshot, User, make_group
from daemon.plugins import plugin_manager
from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.store.sqlite import SqliteStore
from daemon.targets.scim import target as target_module
from plugins.alexishr.mapping import UserSchema
from plugins.alexishr.options import AlexisHROptions
from plugins.alexishr.target import AlexisHRTarget
from tests.core.support import FedSource
from tests.scim.harness import running_scim_server

TOKEN = "bench-token-0123456789abcdef"


def directory(n: int) -> Snapshot:
    users = [
        User(
            id=f"u-{i:06d}",
            username=f"user{i}",
            email=f"user{i}@bench.example",
            given_name="Given",
            family_name=f"Family{i}",
            title="Engineer",
            phone=f"+46 70 {100 + i % 900:03d} {i % 100:02d} {i % 97:02d}",
            employee_id=str(i),
            department="Engineering",
        )
        for i in range(n)
    ]
    return Snapshot.of(users, [make_group("g-app", "AlexisHR Users", [u.id for u in users])])


async def raw_load(url: str, snapshot: Snapshot, concurrency: int) -> tuple[float, float]:
    """Seconds for a plain aiohttp client to POST every user body, and its CPU seconds."""
    schema = UserSchema(phone_region="SE")
    bodies = [json.dumps(schema.body(u).body).encode() for u in snapshot.users.values()]
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/scim+json",
        "Accept": "application/scim+json",
    }
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(f"{url}/Users", data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 201, resp.status

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, time.process_time() - cpu


@dataclass
class Provisioned:
    """Timings of provisiond's initial provisioning (seconds)."""

    users: float  # until the group phase starts: every user created
    total: float  # users, then the group with every member
    quiet: float  # one no-change cycle afterwards
    cycles: int
    cpu: float  # client CPU of the initial provisioning


async def provisiond_load(
    url: str, snapshot: Snapshot, concurrency: int, root: Path, batch_size: int | None = None
) -> Provisioned:
    """Time the initial provisioning, users and group apart, and a no-change cycle."""
    (root / "token").write_text(TOKEN)
    options = AlexisHROptions.model_validate(
        {
            "connection": "bench",
            "scim": {
                "base_url": url,
                "token_file": str(root / "token"),
                "max_concurrency": concurrency,
                "rate_limit": 10000,
            },
        }
    )
    target = AlexisHRTarget("bench", options, PluginContext(root, root, SecretStore()))
    store = SqliteStore(root / "state.db")
    await store.open()
    settings = TargetSettings(
        name="bench",
        kind="alexishr",
        groups=["AlexisHR Users"],
        guard=GuardSettings(max_share=1.0, min_count=1_000_000),
    )
    engine = Engine(
        FedSource(snapshot),
        [TargetSlot(settings, target)],
        store,
        plugin_manager(entry_points=False),
        EngineSettings(
            batch_size=batch_size or EngineSettings().batch_size, retry_base=0.1, retry_max=1.0
        ),
    )
    # Deliveries go phase by phase and batches in phase order, so the first group
    # upsert marks the end of the users' provisioning. The target calls the handler
    # through its module's global, so that is where the timer goes in.
    handlers = vars(target_module)
    group_started: list[float] = []
    upsert_group = handlers["upsert_group"]

    async def timed_upsert_group(link: Any, delta: Any) -> Any:
        group_started.append(time.perf_counter())
        return await upsert_group(link, delta)

    handlers["upsert_group"] = timed_upsert_group
    started, cpu = time.perf_counter(), time.process_time()
    cycles = 0
    while True:
        cycles += 1
        report = await engine.cycle()
        if report.targets["bench"].dirty == 0:
            break
        await asyncio.sleep(0.1)
    initial, cpu = time.perf_counter() - started, time.process_time() - cpu
    handlers["upsert_group"] = upsert_group
    users = (min(group_started) if group_started else time.perf_counter()) - started
    started = time.perf_counter()
    report = await engine.cycle()
    quiet = time.perf_counter() - started
    assert report.result == "quiet"
    await target.aclose()
    await store.aclose()
    return Provisioned(users, initial, quiet, cycles, cpu)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EngineSettings().batch_size,
        help="the engine's (default: the engine's default)",
    )
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    snapshot = directory(args.users)
    load_before = os.getloadavg()
    with running_scim_server(bearer_tokens=[TOKEN]) as server:
        raw_before, raw_cpu = await raw_load(server.url, snapshot, args.concurrency)
    with running_scim_server(bearer_tokens=[TOKEN]) as server, tempfile.TemporaryDirectory() as tmp:
        run = await provisiond_load(
            server.url, snapshot, args.concurrency, Path(tmp), args.batch_size
        )
    with running_scim_server(bearer_tokens=[TOKEN]) as server:
        raw_after, _ = await raw_load(server.url, snapshot, args.concurrency)
    load_after = os.getloadavg()
    n = args.users
    raw = (raw_before + raw_after) / 2
    raw_rate = n / raw
    cpu = platform.processor() or platform.machine()
    print(
        f"\n### SCIM provisioning, {n} users into scim2-server over loopback\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.system()} {platform.release()}, "
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, concurrency "
        f"{args.concurrency}, engine batch size {args.batch_size}; load average (1 min) "
        f"{load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (other work shares the machine)\n\n"
        "| measure | value |\n|---|---|\n"
        f"| raw capacity (plain aiohttp POSTs; mean of before/after) | {raw_rate:.0f} users/s "
        f"({raw_before:.1f} s, {raw_after:.1f} s; client CPU {raw_cpu:.1f} s) |\n"
        f"| provisiond, users only | {n / run.users:.0f} users/s ({run.users:.1f} s) |\n"
        f"| provisiond, users + group of {n} members | {n / run.total:.0f} users/s "
        f"({run.total:.1f} s, group {run.total - run.users:.1f} s, {run.cycles} cycle(s); "
        f"client CPU {run.cpu:.1f} s) |\n"
        f"| ratio to raw capacity, users only | {raw / run.users:.2f} |\n"
        f"| ratio to raw capacity, users + group | {raw / run.total:.2f} |\n"
        f"| no-change cycle at {n} provisioned users | {run.quiet * 1000:.1f} ms |\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
