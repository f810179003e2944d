"""SCIM provisioning benchmark: 10,000 users into scim2-server over loopback.

    python bench/scim_provision.py [--users 10000] [--concurrency 8]

Measures, in one run and against fresh scim2-server processes:

1. raw capacity: a plain aiohttp client POSTing the same user bodies at the
   same concurrency;
2. provisiond: the engine, the SQLite store and the AlexisHR target doing the
   initial provisioning (users, then the bound group with every member);
3. the no-change cycle time with every user provisioned.

Prints a Markdown table with the machine and the date.
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
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import EngineSettings, GuardSettings, TargetSettings
from daemon.engine import Engine, TargetSlot
from daemon.model import Snapshot, User, make_group
from daemon.plugins import plugin_manager
from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.store.sqlite import SqliteStore
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


async def raw_load(url: str, snapshot: Snapshot, concurrency: int) -> float:
    """Seconds for a plain aiohttp client to POST every user body."""
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

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def provisiond_load(
    url: str, snapshot: Snapshot, concurrency: int, root: Path
) -> tuple[float, float, int]:
    """Seconds of the initial sync, seconds of a no-change cycle, cycles taken."""
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
        EngineSettings(batch_size=500, retry_base=0.1, retry_max=1.0),
    )
    started = time.perf_counter()
    cycles = 0
    while True:
        cycles += 1
        report = await engine.cycle()
        if report.targets["bench"].dirty == 0:
            break
        await asyncio.sleep(0.1)
    initial = time.perf_counter() - started
    started = time.perf_counter()
    report = await engine.cycle()
    quiet = time.perf_counter() - started
    assert report.result == "quiet"
    await target.aclose()
    await store.aclose()
    return initial, quiet, cycles


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    snapshot = directory(args.users)
    with running_scim_server(bearer_tokens=[TOKEN]) as server:
        raw = await raw_load(server.url, snapshot, args.concurrency)
    with running_scim_server(bearer_tokens=[TOKEN]) as server, tempfile.TemporaryDirectory() as tmp:
        initial, quiet, cycles = await provisiond_load(
            server.url, snapshot, args.concurrency, Path(tmp)
        )
    n = args.users
    raw_rate, rate = n / raw, n / initial
    cpu = platform.processor() or platform.machine()
    print(
        f"\n### SCIM provisioning, {n} users into scim2-server over loopback\n\n"
        f"{time.strftime('%Y-%m-%d')}, {platform.system()} {platform.release()}, {cpu}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, concurrency "
        f"{args.concurrency}\n\n"
        "| measure | value |\n|---|---|\n"
        f"| raw capacity (plain aiohttp POSTs) | {raw_rate:.0f} users/s ({raw:.1f} s) |\n"
        f"| provisiond initial provisioning (users + group) | {rate:.0f} users/s "
        f"({initial:.1f} s, {cycles} cycles) |\n"
        f"| ratio to raw capacity | {rate / raw_rate:.2f} |\n"
        f"| no-change cycle at {n} provisioned users | {quiet * 1000:.1f} ms |\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
