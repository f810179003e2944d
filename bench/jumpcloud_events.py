"""JumpCloud event watch benchmark, against the FAKE JumpCloud of the tests (not JumpCloud).

    python bench/jumpcloud_events.py [--users 20000] [--groups 200] [--changes 50]
                                     [--intervals 0.5,2] [--repeat 3]

Serves ``--users`` system users in ``--groups`` user groups (100 members
each) from tests/jumpcloud/fake_jumpcloud.py on 127.0.0.1, in this process.
Measures, with medians:

- a full read: a fresh source's first fetch, its time and requests;
- for each ``--intervals`` value, ``--changes`` single-user changes, each at
  a random moment of the poll cycle: the lag from the change on the fake to
  the watch's notice (p50, p99, max), then the fetch that re-reads that user
  (time and requests);
- a quiet fetch (nothing announced): its time, and that it sends nothing.

The fake answers from memory on loopback, so these figures are the source's
own cost and the poll interval's share of the lag; JumpCloud adds its network
round trips and the time it takes to index an event.
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

import anyio
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.base import ChangeNotice
from daemon.sources.jumpcloud import JumpCloudOptions, JumpCloudSource
from tests.jumpcloud.fake_jumpcloud import FakeJumpCloud, system_user

KEY = "bench-key-0123456789"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    fake = FakeJumpCloud(api_key=KEY)
    fake.users = [system_user(n) for n in range(args.users)]
    ids = [u["_id"] for u in fake.users]
    fake.groups = [{"id": f"g{n:04d}", "name": f"group {n}"} for n in range(args.groups)]
    fake.members = {
        g["id"]: [ids[(n * 100 + k) % len(ids)] for k in range(100)]
        for n, g in enumerate(fake.groups)
    }
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        await anyio.Path(tmp, "key").write_text(KEY)
        context = PluginContext(config_dir=Path(tmp), state_dir=Path(tmp), secrets=SecretStore())

        def source(**extra: object) -> JumpCloudSource:
            options = JumpCloudOptions.model_validate(
                {"api_key_file": "key", "base_url": url, **extra}
            )
            return JumpCloudSource(options, context)

        full: list[float] = []
        requests = 0
        for _ in range(args.repeat):
            s = source()
            started = time.perf_counter()
            await s.fetch(None)
            full.append(time.perf_counter() - started)
            requests = s.requests
            await s.aclose()
        print(
            f"\nfull read of {args.users:,} users and {args.groups} groups: "
            f"{statistics.median(full):.2f} s median, {requests} requests"
        )

        print(
            "\n| events_interval | changes | lag p50 | lag p99 | lag max "
            "| re-read fetch | requests | quiet fetch |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        got = [anyio.Event()]

        def announce(notice: ChangeNotice) -> None:
            got[0].set()

        for interval in args.intervals:
            s = source(events_interval=interval)
            snapshot = await s.fetch(None)
            assert snapshot is not None
            version = snapshot.version
            lags: list[float] = []
            fetches: list[float] = []
            quiet: list[float] = []
            counts: list[int] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(s.watch, announce)
                await anyio.sleep(interval)
                for n in range(args.changes):
                    await anyio.sleep(random.uniform(0, interval))
                    got[0] = anyio.Event()
                    changed = time.perf_counter()
                    fake.update_user(ids[n % len(ids)], jobTitle=f"title {n} at {interval}")
                    await got[0].wait()
                    lags.append(time.perf_counter() - changed)
                    before = len(fake.api_paths())
                    started = time.perf_counter()
                    result = await s.fetch(version)
                    fetches.append(time.perf_counter() - started)
                    counts.append(len(fake.api_paths()) - before)
                    assert result is not None and result.changed is not None
                    version = result.version
                    started = time.perf_counter()
                    assert await s.fetch(version) is None
                    quiet.append(time.perf_counter() - started)
                tg.cancel_scope.cancel()
            await s.aclose()
            print(
                f"| {interval:g} s | {args.changes} | {quantile(lags, 0.5):.3f} s "
                f"| {quantile(lags, 0.99):.3f} s | {max(lags):.3f} s "
                f"| {statistics.median(fetches) * 1000:.1f} ms | {statistics.median(counts):g} "
                f"| {statistics.median(quiet) * 1e6:.0f} µs |"
            )
    await server.close()
    print(
        f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d')}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument(
        "--intervals", type=lambda v: [float(x) for x in v.split(",")], default=[0.5, 2.0]
    )
    parser.add_argument("--repeat", type=int, default=3)
    anyio.run(main, parser.parse_args())
