"""syncrepl benchmark: the ldap source's watch against a slapd with syncprov, at source level.

    python bench/ldap_syncrepl.py [--users 20000] [--groups 200] [--changes 200] [--idle 30]

Starts a private slapd with syncprov on 127.0.0.1 (tests/ldap/slapd.py),
loads ``--users`` users and ``--groups`` groups offline (the generator of
``bench/ldap_read.py``), starts the source's ``watch`` and measures:

- the first refresh: every entry sent by syncprov, until both searches persist;
- per single change (``--changes`` title modifications, one at a time, as the
  rootdn over one open connection): from the moment the modify call starts
  (an upper bound of "from when ldapmodify returns") to the notice, and to a
  ``fetch`` that returns a snapshot holding the change; and the ``fetch``
  alone (the patch of one changed user into the last snapshot);
- the same ``fetch`` after a rename (the renamed user, its reports' managers
  and every group's members resolved again);
- idle CPU of this process with both persistent searches open, over ``--idle``
  seconds, in % of one core;
- a restart of the source: the time until it persists again, resumed from
  the checkpoint, and how many entries came with attributes.

This is the source side only: the engine and a SCIM target are not involved.
Prints Markdown rows of medians and p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ldap  # type: ignore[import-untyped,import-not-found,unused-ignore]

from bench.ldap_read import _cpu, _ldif, _slapd_version, _versions
from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.base import ChangeNotice
from daemon.sources.ldap import LdapOptions, LdapSource
from tests.ldap import seed
from tests.ldap.slapd import ADMIN_DN, ADMIN_PASSWORD, READER_DN, READER_PASSWORD, start


def _source(url: str, workdir: Path) -> LdapSource:
    options = LdapOptions.model_validate(
        {
            "url": url,
            "start_tls": False,
            "bind_dn": READER_DN,
            "bind_password_file": workdir / "reader.pw",
            "user_base": seed.PEOPLE,
            "group_base": seed.GROUPS,
            "backend": "python-ldap",
            "sync": "syncrepl",
        }
    )
    context = PluginContext(config_dir=workdir, state_dir=workdir, secrets=SecretStore())
    return LdapSource(options, context)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _persisting(source: LdapSource) -> None:
    while not (  # noqa: ASYNC110 - polling the source's own flags
        source.sync is not None
        and source.sync.ready.is_set()
        and all(t.refreshed for t in source.sync.state.tables.values())
    ):
        await asyncio.sleep(0.01)


async def _notice_after(notices: list[tuple[float, ChangeNotice]], seen: int) -> None:
    while len(notices) == seen:  # noqa: ASYNC110 - a fine poll costs < 1 ms of latency
        await asyncio.sleep(0.0005)


async def _run(args: argparse.Namespace, workdir: Path) -> None:
    (workdir / "reader.pw").write_text(READER_PASSWORD)
    (workdir / "seed.ldif").write_text(_ldif(args.users, args.groups))
    (workdir / "slapd").mkdir()
    # A content synchronisation search cannot be paged: the reader needs a size
    # limit above the directory's size (docs/sources.md).
    slapd = start(
        workdir / "slapd",
        preload=workdir / "seed.ldif",
        syncprov=True,
        refint=True,
        size_limit=args.users + args.groups + 100,
    )
    rows: list[tuple[str, str]] = []
    try:
        source = _source(slapd.url, workdir)
        notices: list[tuple[float, ChangeNotice]] = []

        def announce(notice: ChangeNotice) -> None:
            notices.append((time.perf_counter(), notice))

        started = time.perf_counter()
        task = asyncio.create_task(source.watch(announce))
        await _persisting(source)
        rows.append(
            ("first refresh (syncprov sends everything)", f"{time.perf_counter() - started:.2f} s")
        )
        await source.fetch(None)

        admin = ldap.initialize(slapd.url)
        admin.simple_bind_s(ADMIN_DN, ADMIN_PASSWORD)
        to_notice: list[float] = []
        to_snapshot: list[float] = []
        fetch_only: list[float] = []
        for i in range(args.changes):
            uid = f"u{(i * 97) % args.users:05d}"
            dn = f"uid={uid},{seed.PEOPLE}"
            title = f"Title {i}".encode()
            seen = len(notices)
            t0 = time.perf_counter()
            await asyncio.to_thread(admin.modify_s, dn, [(ldap.MOD_REPLACE, "title", [title])])
            await _notice_after(notices, seen)
            to_notice.append(notices[seen][0] - t0)
            while True:
                f0 = time.perf_counter()
                snap = await source.fetch(None)
                f1 = time.perf_counter()
                assert snap is not None
                if any(
                    u.username == uid and u.title == title.decode() for u in snap.users.values()
                ):
                    break
            fetch_only.append(f1 - f0)
            to_snapshot.append(f1 - t0)
        ms = 1000.0
        rows += [
            (
                "change → notice, p50 / p99",
                f"{statistics.median(to_notice) * ms:.1f} / {_pct(to_notice, 0.99) * ms:.1f} ms",
            ),
            (
                "change → snapshot with it, p50 / p99",
                f"{statistics.median(to_snapshot) * ms:.1f} / "
                f"{_pct(to_snapshot, 0.99) * ms:.1f} ms",
            ),
            (
                "fetch after one modify (patch), median",
                f"{statistics.median(fetch_only) * ms:.2f} ms",
            ),
        ]
        renames: list[float] = []
        for i in range(5):
            seen = len(notices)
            await asyncio.to_thread(
                admin.rename_s, f"uid=u{i:05d},{seed.PEOPLE}", f"uid=r{i:05d}", None, 1
            )
            await _notice_after(notices, seen)
            f0 = time.perf_counter()
            await source.fetch(None)
            renames.append(time.perf_counter() - f0)
        rows.append(
            (
                "fetch after a rename (patched, groups resolved again), median",
                f"{statistics.median(renames) * ms:.1f} ms",
            )
        )
        await asyncio.sleep(2)  # the group read after the renames
        await source.fetch(None)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(args.idle)
        idle = (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
        rows.append(
            (f"idle CPU with both searches open ({args.idle:g} s)", f"{idle:.2f} % of one core")
        )

        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for i in range(10):
            admin.modify_s(
                f"uid=u{1000 + i:05d},{seed.PEOPLE}", [(ldap.MOD_REPLACE, "title", [b"Off"])]
            )
        again = _source(slapd.url, workdir)
        started = time.perf_counter()
        task = asyncio.create_task(again.watch(announce))
        await _persisting(again)
        assert again.sync is not None
        rows.append(
            (
                "source restart: resume from the checkpoint until persisting",
                f"{time.perf_counter() - started:.2f} s, {again.sync.state.entries_received} "
                f"entries with attributes, {again.sync.full_loads} full loads",
            )
        )
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        slapd.stop()
    print(
        f"{args.users:,} users, {args.groups} groups; {_cpu()}; {_versions()}; {_slapd_version()}"
    )
    print()
    print("| measure | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-syncrepl-") as tmp:
        asyncio.run(_run(args, Path(tmp)))


if __name__ == "__main__":
    main()
