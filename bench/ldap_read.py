"""LDAP read benchmark: the ldap source against ``ldapsearch`` on the same slapd, same run.

    python bench/ldap_read.py [--users 20000] [--groups 200] [--repeat 5]
                              [--backends ldap3,python-ldap] [--profile]

Starts a private slapd on 127.0.0.1 (tests/ldap/slapd.py), loads ``--users``
inetOrgPersons and ``--groups`` groupOfNames offline with slapadd, then, bound
as the size-limited service account over loopback:

for each read backend (``--backends``; python-ldap only when installed):

- full read: a fresh ``ldap`` source's first fetch (every user and group,
  paged, parsed and assembled into a Snapshot), against ``ldapsearch -E
  pr=1000/noprompt`` fetching the same entries with the same filters and
  attributes (its LDIF output goes to /dev/null);
- incremental poll: 10 users modified, then the next fetch of a source that
  has done its full read, against ldapsearch with the same ``modifyTimestamp``
  filter;
- with python-ldap, the library alone paging through the same entries and
  mapping nothing: the floor under that backend;
- one more full read under tracemalloc: the Python heap it keeps and its peak.

ldapsearch is timed in the same rounds as each backend, so every ratio
compares runs made under the same machine load; with python-ldap, the full
read's ratio to the library alone (the target: at most 1.3x) is printed too.
Prints Markdown tables of medians and of heap sizes. ``--profile`` runs one
full read per backend under cProfile and prints the top functions instead.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio

from daemon.model import Snapshot
from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.ldap import LdapOptions, LdapSource
from daemon.sources.ldap.backend import fast_backend_installed
from daemon.sources.ldap.source import since_filter
from tests.ldap import seed
from tests.ldap.slapd import (
    BASE_DN,
    READER_DN,
    READER_PASSWORD,
    Slapd,
    start,
)

#: Seeded entries carry old, distinct change times, as in a directory that has
#: been running for a while: an incremental poll reads only what changed (plus
#: the entries of the mark's own second, which the source re-reads on purpose).
EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
CHANGES = 10


def _stamp(n: int) -> str:
    return (EPOCH + datetime.timedelta(seconds=n)).strftime("%Y%m%d%H%M%SZ")


def _ldif(users: int, groups: int) -> str:
    out = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n"
        "dc: example\n",
        f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: reader\nuserPassword: {READER_PASSWORD}\n",
        f"dn: {seed.PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {seed.GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
    ]
    for i in range(users):
        manager = f"manager: uid=u{i // 10:05d},{seed.PEOPLE}\n" if i >= 10 else ""
        out.append(
            f"dn: uid=u{i:05d},{seed.PEOPLE}\nobjectClass: inetOrgPerson\nuid: u{i:05d}\n"
            f"cn: User {i}\ngivenName: User\nsn: Number{i}\ndisplayName: User Number {i}\n"
            f"mail: u{i:05d}@example.org\ntitle: Engineer\ntelephoneNumber: +46 8 555 {i:05d}\n"
            f"employeeNumber: E{i}\ndepartmentNumber: D{i % 20}\no: Example AB\n{manager}"
            f"modifyTimestamp: {_stamp(i)}\ncreateTimestamp: {_stamp(i)}\n"
        )
    per_group = max(1, users // groups)
    for g in range(groups):
        members = "".join(
            f"member: uid=u{(g * per_group + k) % users:05d},{seed.PEOPLE}\n"
            for k in range(per_group)
        )
        out.append(
            f"dn: cn=group{g:03d},{seed.GROUPS}\nobjectClass: groupOfNames\ncn: group{g:03d}\n"
            f"{members}modifyTimestamp: {_stamp(users + g)}\n"
            f"createTimestamp: {_stamp(users + g)}\n"
        )
    return "\n".join(out) + "\n"


def _source(slapd: Slapd, workdir: Path, page_size: int, backend: str) -> LdapSource:
    options = LdapOptions.model_validate(
        {
            "url": slapd.url,
            "start_tls": False,
            "bind_dn": READER_DN,
            "bind_password_file": workdir / "reader.pw",
            "user_base": seed.PEOPLE,
            "group_base": seed.GROUPS,
            "page_size": page_size,
            "full_read_every": 1_000_000,
            "backend": backend,
        }
    )
    context = PluginContext(config_dir=workdir, state_dir=workdir, secrets=SecretStore())
    return LdapSource(options, context)


def _ldapsearch(slapd: Slapd, workdir: Path, source: LdapSource, mark: str | None) -> float:
    """Seconds ldapsearch takes to fetch what the source fetches (users, then groups)."""
    layout = source.layout
    searches = [
        (layout.user_base, layout.user_filter, layout.user_attributes()),
        (layout.group_base or "", layout.group_filter, layout.group_attributes()),
    ]
    started = time.perf_counter()
    for base, search_filter, attributes in searches:
        if mark is not None:
            search_filter = since_filter(search_filter, layout.change_attribute, mark)
        subprocess.run(
            [
                *("ldapsearch", "-x", "-LLL", "-H", slapd.url, "-D", READER_DN),
                *("-y", str(workdir / "reader.pw"), "-b", base, "-E", "pr=1000/noprompt"),
                search_filter,
                *attributes,
            ],
            stdout=subprocess.DEVNULL,
            check=True,
        )
    return time.perf_counter() - started


def _library_only(slapd: Slapd, source: LdapSource, page_size: int) -> float:
    """Seconds python-ldap alone takes to page through the same entries, mapping nothing.

    The floor under the python-ldap backend: the C library's decoding and
    the Python objects it builds, with the cyclic collector paused as the
    source pauses it. What the source spends above this is its own work.
    """
    import gc

    import ldap  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from ldap.controls import SimplePagedResultsControl  # type: ignore[import-untyped,import-not-found,unused-ignore]

    layout = source.layout
    conn = ldap.initialize(slapd.url)
    conn.simple_bind_s(READER_DN, READER_PASSWORD)
    searches = [
        (layout.user_base, layout.user_filter, layout.user_attributes()),
        (layout.group_base or "", layout.group_filter, layout.group_attributes()),
    ]
    paused = gc.isenabled()
    gc.disable()
    started = time.perf_counter()
    try:
        for base, search_filter, attributes in searches:
            control = SimplePagedResultsControl(False, size=page_size, cookie=b"")
            classes = {control.controlType: SimplePagedResultsControl}
            while True:
                msgid = conn.search_ext(
                    base, ldap.SCOPE_SUBTREE, search_filter, attributes, serverctrls=[control]
                )
                _, _, _, controls = conn.result3(msgid, resp_ctrl_classes=classes)
                cookie = next(
                    (c.cookie for c in controls if c.controlType == control.controlType), b""
                )
                if not cookie:
                    break
                control.cookie = cookie
        return time.perf_counter() - started
    finally:
        if paused:
            gc.enable()
        conn.unbind_ext_s()


async def _fetch_timed(source: LdapSource, known: str | None) -> tuple[float, Snapshot | None]:
    """Seconds one ``source.fetch`` takes inside a running event loop, and its result.

    Timed inside the loop, not around ``anyio.run``: on Python 3.11 the run's
    teardown formats the main task's repr (through the SIGINT handler it
    checks), result included, which for a 20,000-user snapshot costs more
    than an incremental poll. The daemon's loop never ends that way.
    """
    started = time.perf_counter()
    snapshot = await source.fetch(known)
    return time.perf_counter() - started, snapshot


def _timed(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def _modify(slapd: Slapd) -> None:
    """Change the same users every run: the previous run's changes sit at the mark."""
    first = 1000
    slapd.modify(
        "\n".join(
            f"dn: uid=u{i:05d},{seed.PEOPLE}\nchangetype: modify\nreplace: title\n"
            f"title: Changed {time.time()}\n"
            for i in range(first, first + CHANGES)
        )
    )


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ldap-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "reader.pw").write_text(READER_PASSWORD)
        (workdir / "reader.pw").chmod(0o600)
        (workdir / "seed.ldif").write_text(_ldif(args.users, args.groups))
        (workdir / "slapd").mkdir()
        load, slapd = _timed(lambda: start(workdir / "slapd", preload=workdir / "seed.ldif"))
        print(f"slapadd + start: {load:.1f}s", file=sys.stderr)
        try:
            _run(slapd, workdir, args)
        finally:
            slapd.stop()


def _run(slapd: Slapd, workdir: Path, args: argparse.Namespace) -> None:
    backends = [b for b in args.backends.split(",") if b]
    if "python-ldap" in backends and not fast_backend_installed():
        print("python-ldap is not installed: skipping that backend", file=sys.stderr)
        backends.remove("python-ldap")
    if args.profile:
        for backend in backends:
            source = _source(slapd, workdir, args.page_size, backend)
            profiler = cProfile.Profile()
            profiler.enable()
            source._fetch_sync(True)  # in this thread: cProfile sees only its own thread
            profiler.disable()
            print(f"## {backend}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        return

    rows = []
    for backend in backends:
        rows.extend(_measure(slapd, workdir, args, backend))
    med = statistics.median
    print(
        f"machine: {platform.machine()}, {_cpu()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {_slapd_version()}, {_versions()}; "
        f"{datetime.date.today().isoformat()}; medians of {args.repeat} runs; "
        f"page size {args.page_size}"
    )
    print()
    print("| read | backend | entries | ldap source | ldapsearch | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for read, backend, entries, ours, theirs, scale, unit in rows:
        print(
            f"| {read} | {backend} | {entries} | {med(ours) * scale:.{0 if unit == 'ms' else 2}f}"
            f" {unit} | {med(theirs) * scale:.{0 if unit == 'ms' else 2}f} {unit} | "
            f"{med(ours) / med(theirs):.1f}x |"
        )
    floors = {b: ours for read, b, _, ours, _, _, _ in rows if read.startswith("full, library")}
    for read, backend, _, ours, _, _, _ in rows:
        if read == "full" and backend in floors:
            floor = med(floors[backend])
            print()
            print(
                f"{backend} full read / library alone: {med(ours) / floor:.2f}x "
                f"({(med(ours) - floor):.2f} s above the floor; target <= 1.3x)"
            )
    print()
    print("| backend | Python heap kept after a full read | peak during it |")
    print("|---|---:|---:|")
    for backend in backends:
        kept, peak = _heap(slapd, workdir, args.page_size, backend)
        print(f"| {backend} | {kept / 1e6:.1f} MB | {peak / 1e6:.1f} MB |")


def _heap(slapd: Slapd, workdir: Path, page_size: int, backend: str) -> tuple[int, int]:
    """Bytes of Python heap a full read leaves allocated, and its peak (tracemalloc).

    A separate read: tracing slows allocation, so it is not one of the timed ones.
    """
    import tracemalloc

    source = _source(slapd, workdir, page_size, backend)
    tracemalloc.start()
    try:
        source._fetch_sync(True)
        return tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()


Row = tuple[str, str, str, list[float], list[float], float, str]


def _measure(slapd: Slapd, workdir: Path, args: argparse.Namespace, backend: str) -> list[Row]:
    """Full and incremental reads with ``backend``, each beside ldapsearch in the same round."""
    full: list[float] = []
    full_ls: list[float] = []
    incr: list[float] = []
    incr_ls: list[float] = []
    floor: list[float] = []
    floor_ls: list[float] = []
    snapshot = None
    for r in range(args.repeat):
        source = _source(slapd, workdir, args.page_size, backend)
        seconds, snapshot = anyio.run(_fetch_timed, source, None)
        full.append(seconds)
        full_ls.append(_ldapsearch(slapd, workdir, source, None))
        if backend == "python-ldap":
            floor.append(_library_only(slapd, source, args.page_size))
            floor_ls.append(_ldapsearch(slapd, workdir, source, None))
        # The change time has one-second resolution: let the clock pass the mark.
        time.sleep(1.1)
        _modify(slapd)
        mark = source._state.mark if source._state else None
        seconds, _ = anyio.run(_fetch_timed, source, snapshot.version)
        assert source.last_read == "incremental", source.last_read
        assert source.last_stats.users == CHANGES, (mark, source.last_stats)
        incr.append(seconds)
        incr_ls.append(_ldapsearch(slapd, workdir, source, mark))
        print(
            f"{backend} run {r + 1}: full {full[-1]:.3f}s (ldapsearch {full_ls[-1]:.3f}s), "
            f"incremental {incr[-1]:.3f}s (ldapsearch {incr_ls[-1]:.3f}s)",
            file=sys.stderr,
        )
    assert snapshot is not None
    entries = f"{len(snapshot.users):,} users + {len(snapshot.groups):,} groups"
    rows: list[Row] = []
    if floor:
        rows.append(
            ("full, library alone (no mapping)", backend, entries, floor, floor_ls, 1.0, "s")
        )
    return [
        *rows,
        ("full", backend, entries, full, full_ls, 1.0, "s"),
        (
            f"incremental, {CHANGES} changed",
            backend,
            f"{CHANGES} users",
            incr,
            incr_ls,
            1000.0,
            "ms",
        ),
    ]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("ldap3", "python-ldap"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def _slapd_version() -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "slapd"], capture_output=True)
    return f"slapd {done.stdout.decode().strip() or '?'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument(
        "--backends",
        default="ldap3,python-ldap",
        help="comma-separated read backends to measure (default: %(default)s)",
    )
    parser.add_argument("--profile", action="store_true")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
