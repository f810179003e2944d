"""Cycle benchmark: full cycle on a changed file, a no-change cycle, the diff alone, peak RSS.

    python bench/cycle.py 10000 100000 [--repeat 5]

Each size runs in its own process (so peak RSS is that size's alone) with
the real file source, the SQLite store and a target that accepts everything
(the log target at a level that is not printed). Five of the twenty groups
are bound to the target. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio

from bench.gen_directory import generate


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    if isinstance(data, Path):
        shutil.copyfile(data, tmp)
    else:
        tmp.write_text(json.dumps(data))
    tmp.replace(path)
    # The file source does not trust an mtime younger than its racy window.
    old = time.time() - 10
    os.utime(path, (old, old))


async def _measure(n: int, repeat: int, workdir: Path) -> dict[str, float]:
    import logging

    from daemon import logs
    from daemon.config import EngineSettings, TargetSettings
    from daemon.diff import diff
    from daemon.engine import Engine, TargetSlot
    from daemon.plugins import plugin_manager
    from daemon.runtime import PluginContext
    from daemon.secrets import SECRETS
    from daemon.sources.file import FileSource
    from daemon.store.sqlite import SqliteStore
    from daemon.targets.log import LogOptions, LogTarget

    logs.configure("error", "json")
    logging.getLogger().setLevel(logging.ERROR)
    path = workdir / "directory.json"
    versions = [workdir / "v0.json", workdir / "v1.json"]
    _write(path, versions[0])
    source = FileSource(path=path, format="json", where="directory.json")
    store = SqliteStore(workdir / "state.db")
    await store.open()
    ctx = PluginContext(workdir, workdir, SECRETS)
    target = LogTarget("bench", LogOptions(level="debug"), ctx)
    settings = TargetSettings(name="bench", kind="log", groups=[f"Group {g:02d}" for g in range(5)])
    engine = Engine(
        source,
        [TargetSlot(settings, target)],
        store,
        plugin_manager(entry_points=False),
        EngineSettings(batch_size=2000),
    )
    t0 = time.perf_counter()
    await engine.cycle()
    initial = time.perf_counter() - t0

    changed, quiet, diffs, hashes_only = [], [], [], []
    for i in range(repeat):
        _write(path, versions[(i + 1) % 2])
        t0 = time.perf_counter()
        report = await engine.cycle()
        changed.append(time.perf_counter() - t0)
        assert report.result == "ok", report
        t0 = time.perf_counter()
        report = await engine.cycle()
        quiet.append(time.perf_counter() - t0)
        assert report.result == "quiet", report
    # The daemon's peak: before this process loads two snapshots for the diff alone.
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _write(path, versions[0])
    a = await source.fetch(None)
    _write(path, versions[1])
    b = await source.fetch(None)
    assert a is not None and b is not None
    for _ in range(repeat):
        t0 = time.perf_counter()
        ha, hb = a.hashes(), b.hashes()
        changed_keys = [k for k, h in hb.items() if ha.get(k) != h]
        hashes_only.append(time.perf_counter() - t0)
        assert len(changed_keys) == n // 100
        t0 = time.perf_counter()
        changes = diff(a, b)
        diffs.append(time.perf_counter() - t0)
        assert len(changes) == n // 100
    await store.aclose()
    return {
        "initial": initial,
        "changed": statistics.median(changed),
        "quiet": statistics.median(quiet),
        "hash_compare": statistics.median(hashes_only),
        "diff": statistics.median(diffs),
        "rss_mb": rss_mb,
    }


def _child(n: int, repeat: int, workdir: Path) -> None:
    try:
        result = anyio.run(_measure, n, repeat, workdir)
    except BaseException:
        traceback.print_exc()
        os._exit(1)  # the store's worker thread would keep the process alive
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.sizes[0], args.repeat, args.child)
        return
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print()
    print(
        "| users | initial sync | full cycle, 1% changed | no-change cycle "
        "| diff | hash+compare | peak RSS |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            for i, change in enumerate((0.0, 0.01)):
                (Path(tmp) / f"v{i}.json").write_text(json.dumps(generate(n, 1, change)))
            out = subprocess.run(
                [sys.executable, __file__, str(n), "--repeat", str(args.repeat), "--child", tmp],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {n:,} | {r['initial']:.2f} s | {r['changed']:.3f} s | {r['quiet'] * 1000:.1f} ms "
            f"| {r['diff']:.3f} s | {r['hash_compare']:.3f} s | {r['rss_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
