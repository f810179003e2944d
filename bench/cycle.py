"""Cycle benchmark: full cycle on a changed file, a no-change cycle, the diff alone, peak RSS.

    python bench/cycle.py 10000 100000 [--repeat 5]
    python bench/cycle.py 100000 --backend sqlite --backend postgresql --groups mixed \
        [--rounds 2]

Each size runs in its own process (so peak RSS is that size's alone) with
the real file source, the store and a target that accepts everything (the
log target at a level that is not printed). Five of the twenty groups are
bound to the target; with ``--groups mixed`` (see ``bench/gen_directory.py``)
All Staff, two departments and every tenth team are. Prints a Markdown table
of medians.

With several ``--backend`` values each round runs every backend in turn, on
the same files, and the table gives each backend's medians over all rounds
and the ratio to the first backend. ``--log-off-too`` runs each backend a
second time in every round with the provisioning log off
(``state.log_retention_days: 0``): the ratio row is then the log's cost.
``postgresql`` runs on a private cluster
(``tests/pg/cluster.py``) with PostgreSQL's durable defaults (fsync on,
synchronous commit), as SQLite runs with ``synchronous=FULL``; each child
gets a new database. The store column is the time the cycle spent in store
calls (``provisiond_store_seconds``).

    python bench/cycle.py 100000 --changes [--repeat 20]

``--changes`` measures what issue 12 asks of event-driven, proportional
cycles instead, on the ``--groups realistic`` directory (2,000 long-tailed
groups, see ``bench/gen_directory.py``), SQLite store:

- *one changed user*: a cycle after a source that knows what changed (as
  syncrepl does) hands the engine a snapshot with ``base``/``changed`` naming
  one user whose title changed; the source's own work is not in it. For
  reference, the same cycle with a snapshot that does not say what changed.
- *changed file, 1% of users*: the real file source and engine, the file
  replaced by one with 1% of the titles changed (alternating), against the
  floor measured in the same process: ``msgspec`` decoding the file and
  BLAKE2b-hashing every record's canonical encoding. Peak RSS is the child
  process's, read before the floor is measured.
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
from typing import Any

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


def _bound_groups(groups: str) -> list[str]:
    if groups == "mixed":
        return ["All Staff", "Engineering", "Sales", *(f"Team {t:04d}" for t in range(0, 200, 10))]
    return [f"Group {g:02d}" for g in range(5)]


def _store_seconds() -> float:
    from daemon.metrics import REGISTRY

    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "provisiond_store_seconds"
        for sample in family.samples
        if sample.name.endswith("_sum")
    )


async def _measure(
    n: int, repeat: int, workdir: Path, backend: str, groups: str, dsn: str, log: bool = True
) -> dict[str, float]:
    import logging

    from daemon import logs
    from daemon.config import EngineSettings, TargetSettings
    from daemon.diff import diff
    from daemon.engine import Engine, TargetSlot
    from daemon.plugins import plugin_manager
    from daemon.runtime import PluginContext
    from daemon.secrets import SECRETS
    from daemon.sources.file import FileSource
    from daemon.store import Store
    from daemon.store.postgres import PostgresStore
    from daemon.store.sqlite import SqliteStore
    from daemon.targets.log import LogOptions, LogTarget

    logs.configure("error", "json")
    logging.getLogger().setLevel(logging.ERROR)
    path = workdir / "directory.json"
    versions = [workdir / "v0.json", workdir / "v1.json"]
    _write(path, versions[0])
    source = FileSource(path=path, format="json", where="directory.json")
    store: Store = SqliteStore(workdir / "state.db")
    if backend == "postgresql":
        store = PostgresStore(dsn, ssl=False)
    await store.open()
    ctx = PluginContext(workdir, workdir, SECRETS)
    target = LogTarget("bench", LogOptions(level="debug"), ctx)
    settings = TargetSettings(name="bench", kind="log", groups=_bound_groups(groups))
    engine = Engine(
        source,
        [TargetSlot(settings, target)],
        store,
        plugin_manager(entry_points=False),
        EngineSettings(batch_size=2000),
    )
    engine.provisioning_log = log
    t0 = time.perf_counter()
    await engine.cycle()
    initial = time.perf_counter() - t0

    changed, quiet, diffs, hashes_only, in_store = [], [], [], [], []
    for i in range(repeat):
        _write(path, versions[(i + 1) % 2])
        s0 = _store_seconds()
        t0 = time.perf_counter()
        report = await engine.cycle()
        changed.append(time.perf_counter() - t0)
        in_store.append(_store_seconds() - s0)
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
        "initial": [initial],
        "changed": changed,
        "quiet": quiet,
        "in_store": in_store,
        "hash_compare": hashes_only,
        "diff": diffs,
        "rss_mb": [rss_mb],
    }


async def _measure_changes(n: int, repeat: int, workdir: Path) -> dict[str, list[float]]:
    import hashlib
    import logging

    import msgspec

    from daemon import logs
    from daemon.config import EngineSettings, TargetSettings
    from daemon.engine import Engine, TargetSlot
    from daemon.model import Snapshot
    from daemon.plugins import plugin_manager
    from daemon.runtime import PluginContext
    from daemon.secrets import SECRETS
    from daemon.sources.file import FileSource
    from daemon.store.sqlite import SqliteStore
    from daemon.targets.log import LogOptions, LogTarget

    logs.configure("error", "json")
    logging.getLogger().setLevel(logging.ERROR)
    ctx = PluginContext(workdir, workdir, SECRETS)
    bound = ["All Staff", *(f"Team {t:04d}" for t in range(1, 2000, 10))]

    def new_engine(source: Any, name: str) -> Engine:
        target = LogTarget("bench", LogOptions(level="debug"), ctx)
        store = SqliteStore(workdir / f"{name}.db")
        settings = TargetSettings(name="bench", kind="log", groups=bound)
        return Engine(
            source,
            [TargetSlot(settings, target)],
            store,
            plugin_manager(entry_points=False),
            EngineSettings(batch_size=2000),
        )

    # -- a changed file, 1% of users ----------------------------------------------
    path = workdir / "directory.json"
    versions = [workdir / "v0.json", workdir / "v1.json"]
    _write(path, versions[0])
    files = new_engine(FileSource(path=path, format="json", where="directory.json"), "file")
    await files.store.open()
    await files.cycle()
    rss_first_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    changed_file: list[float] = []
    for i in range(min(repeat, 7)):
        _write(path, versions[(i + 1) % 2])
        t0 = time.perf_counter()
        report = await files.cycle()
        changed_file.append(time.perf_counter() - t0)
        assert report.result == "ok", report
        assert sum(report.changes.values()) == n // 100, report.changes
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await files.store.aclose()

    # -- one changed user, the source knows which ------------------------------------
    class Known:
        """A source that keeps its directory and says what it changed (like syncrepl)."""

        kind = "bench"
        incremental = True

        def __init__(self, snapshot: Snapshot, proportional: bool) -> None:
            self.users, self.groups = snapshot.users, snapshot.groups
            self.version, self.n = "v0", 0
            self.proportional = proportional
            self.next: Snapshot | None = Snapshot(self.users, self.groups, self.version)

        def change_one(self) -> None:
            self.n += 1
            uid = f"u-{(self.n * 7919) % n:07d}"
            user = self.users[uid]
            title = f"Title {self.n} {self.proportional}"
            self.users[uid] = msgspec.structs.replace(user, title=title)
            base, self.version = self.version, f"v{self.n}"
            self.next = Snapshot(self.users, self.groups, self.version)
            if self.proportional:
                self.next.base, self.next.changed = base, frozenset({("user", uid)})

        async def fetch(self, known: str | None) -> Snapshot | None:
            out, self.next = self.next, None
            return out

        async def check(self) -> list[str]:
            return []

        async def aclose(self) -> None:
            return None

    results: dict[str, list[float]] = {
        "changed_file": changed_file,
        "rss_mb": [rss_mb],
        "rss_first_mb": [rss_first_mb],
    }
    base_snapshot = await FileSource(path=path, format="json", where="d").fetch(None)
    assert base_snapshot is not None
    for proportional in (True, False):
        source = Known(base_snapshot, proportional)
        eng = new_engine(source, f"known-{proportional}")
        await eng.store.open()
        await eng.cycle()
        times: list[float] = []
        cpu: list[float] = []
        in_store: list[float] = []
        for _ in range(repeat if proportional else min(repeat, 5)):
            source.change_one()
            s0, c0 = _store_seconds(), time.process_time()
            t0 = time.perf_counter()
            report = await eng.cycle()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            in_store.append(_store_seconds() - s0)
            assert report.changes == {"user_changed": 1}, (report, proportional)
        await eng.store.aclose()
        results["one_user" if proportional else "one_user_full"] = times
        if proportional:
            results["one_user_cpu"], results["one_user_store"] = cpu, in_store

    # -- the floor: decode the file, hash every record -------------------------------
    floor: list[float] = []
    encoder = msgspec.json.Encoder()
    for i in range(min(repeat, 7)):
        data = versions[i % 2].read_bytes()
        t0 = time.perf_counter()
        doc = msgspec.json.decode(data)
        for record in (*doc["users"], *doc["groups"]):
            hashlib.blake2b(encoder.encode(record), digest_size=12).digest()
        floor.append(time.perf_counter() - t0)
    results["floor"] = floor
    return results


def _changes(args: argparse.Namespace) -> None:
    n = args.sizes[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i, change in enumerate((0.0, 0.01)):
            (Path(tmp) / f"v{i}.json").write_text(json.dumps(generate(n, 1, change, "realistic")))
        argv = [sys.executable, __file__, str(n), "--repeat", str(args.repeat), "--changes"]
        done = subprocess.run([*argv, "--child", tmp], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the child failed:\n{done.stdout}{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
    m = {k: statistics.median(v) for k, v in r.items()}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f"; load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d')}"
    )
    print()
    print(
        "| users | one changed user (base/changed) | of which CPU | of which store "
        "| same, full compare | changed file, 1% | floor (decode + hash) | file / floor "
        "| peak RSS (of which by the end of the first sync) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {n:,} | {m['one_user'] * 1000:.1f} ms | {m['one_user_cpu'] * 1000:.1f} ms "
        f"| {m['one_user_store'] * 1000:.1f} ms | {m['one_user_full'] * 1000:.0f} ms "
        f"| {m['changed_file']:.3f} s | {m['floor']:.3f} s "
        f"| {m['changed_file'] / m['floor']:.2f}x | {m['rss_mb']:.0f} MB "
        f"({m['rss_first_mb']:.0f} MB) |"
    )
    spread = "; ".join(
        f"{k} {min(r[k]):.4f} to {max(r[k]):.4f} s"
        for k in ("one_user", "one_user_full", "changed_file", "floor")
    )
    print(f"\nevery run: {spread}")


def _child(
    n: int, repeat: int, workdir: Path, backend: str, groups: str, dsn: str, log: bool
) -> None:
    try:
        result = anyio.run(_measure, n, repeat, workdir, backend, groups, dsn, log)
    except BaseException:
        traceback.print_exc()
        os._exit(1)  # the store's worker thread would keep the process alive
    print(json.dumps(result))


def _run_child(
    args: argparse.Namespace, n: int, tmp: str, backend: str, dsn: str, log: bool = True
) -> Any:
    argv = [sys.executable, __file__, str(n), "--repeat", str(args.repeat), "--child", tmp]
    argv += ["--backend", backend, "--groups", args.groups, "--dsn", dsn]
    if not log:
        argv.append("--no-log")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the {backend} child failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--backend", action="append", choices=["sqlite", "postgresql"], dest="backends"
    )
    parser.add_argument("--groups", choices=["uniform", "mixed", "realistic"], default="uniform")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--changes", action="store_true", help="event-driven cycles (issue 12)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", default="", help=argparse.SUPPRESS)
    parser.add_argument("--no-log", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--log-off-too", action="store_true",
        help="also run each backend with the provisioning log off, in the same rounds",
    )  # fmt: skip
    args = parser.parse_args()
    backends: list[str] = args.backends or ["sqlite"]
    if args.changes:
        if args.child:
            try:
                out = anyio.run(_measure_changes, args.sizes[0], args.repeat, args.child)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            print(json.dumps(out))
            os._exit(0)  # the store's worker thread would keep the process alive
        _changes(args)
        return
    if args.child:
        _child(
            args.sizes[0], args.repeat, args.child, backends[0], args.groups, args.dsn,
            not args.no_log,
        )  # fmt: skip
        return
    cluster = None
    if "postgresql" in backends:
        from tests.pg.cluster import start_cluster

        cluster = start_cluster(durable=True)
    try:
        _report(args, backends, cluster)
    finally:
        if cluster is not None:
            cluster.destroy()


def _report(args: argparse.Namespace, backends: list[str], cluster: Any) -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f"; load average {os.getloadavg()[0]:.2f}"
    )
    if cluster is not None:
        print(f"PostgreSQL: {cluster.psql('SHOW server_version')}, durable defaults")
    print()
    print(
        "| users | store | initial sync | full cycle, 1% changed | of which store "
        "| no-change cycle | diff | hash+compare | peak RSS |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    variants = [(b, b, True) for b in backends]
    if args.log_off_too:
        variants = [v for b in backends for v in ((b, b, True), (f"{b}, log off", b, False))]
    labels = [label for label, _, _ in variants]
    for n in args.sizes:
        runs: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
        with tempfile.TemporaryDirectory() as tmp:
            for i, change in enumerate((0.0, 0.01)):
                data = generate(n, 1, change, args.groups)
                (Path(tmp) / f"v{i}.json").write_text(json.dumps(data))
            for _ in range(args.rounds):
                for label, backend, log in variants:
                    dsn = cluster.new_database() if backend == "postgresql" else ""
                    for measure, values in _run_child(args, n, tmp, backend, dsn, log).items():
                        runs[label].setdefault(measure, []).extend(values)
        backends = labels
        first = {k: statistics.median(v) for k, v in runs[backends[0]].items()}
        for backend in backends:
            r = {k: statistics.median(v) for k, v in runs[backend].items()}
            print(
                f"| {n:,} | {backend} | {r['initial']:.2f} s | {r['changed']:.3f} s "
                f"| {r['in_store']:.3f} s | {r['quiet'] * 1000:.1f} ms | {r['diff']:.3f} s "
                f"| {r['hash_compare']:.3f} s | {r['rss_mb']:.0f} MB |"
            )
        for backend in backends[1:]:
            r = {k: statistics.median(v) for k, v in runs[backend].items()}
            print(
                f"| {n:,} | {backend} / {backends[0]} | {r['initial'] / first['initial']:.2f} "
                f"| {r['changed'] / first['changed']:.2f} "
                f"| {r['in_store'] / first['in_store']:.2f} "
                f"| {r['quiet'] / first['quiet']:.2f} | | | |"
            )
        if len(backends) > 1 or args.rounds > 1:
            print()
            for backend in backends:
                spread = "; ".join(
                    f"{measure} {min(runs[backend][measure]):.3f} to "
                    f"{max(runs[backend][measure]):.3f} s"
                    for measure in ("initial", "changed", "quiet")
                )
                print(f"- {n:,} users, {backend}, every run: {spread}")


if __name__ == "__main__":
    main()
