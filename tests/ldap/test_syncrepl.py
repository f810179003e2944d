"""The ldap source's syncrepl watch (RFC 4533 refreshAndPersist) against a real slapd.

slapd runs with the syncprov overlay (reload hints honoured) and refint
(members rewritten on rename and delete). Each test starts the source's
``watch`` as the service would, makes changes with ldapmodify, and checks
both the notices and the snapshot ``fetch`` returns, which must come from the
sync state (no poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

from daemon.metrics import REGISTRY
from daemon.model import Snapshot
from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.base import ChangeNotice, SourceError
from daemon.sources.ldap import LdapOptions, LdapSource
from daemon.sources.ldap.backend import fast_backend_installed
from tests.ldap import seed
from tests.ldap.slapd import SLAPD, Slapd, start
from tests.support.certs import write_ca_and_server

LDAP = {"source": "ldap"}

pytestmark = pytest.mark.skipif(
    not fast_backend_installed() or not SLAPD.exists(),
    reason="syncrepl needs python-ldap (ldap-fast extra) and slapd",
)


@pytest.fixture
def sync_slapd(tmp_path: Path) -> Iterator[Slapd]:
    work = tmp_path / "slapd"
    work.mkdir()
    server = start(work, syncprov=True, refint=True)
    try:
        server.modify(seed.base_ldif())
        yield server
    finally:
        server.stop()


@pytest.fixture
def plain_slapd(tmp_path: Path) -> Iterator[Slapd]:
    work = tmp_path / "plain"
    work.mkdir()
    server = start(work)
    try:
        server.modify(seed.base_ldif())
        yield server
    finally:
        server.stop()


def make(server: Slapd, state_dir: Path, **overrides: Any) -> LdapSource:
    options = seed.reader_options(
        server,
        state_dir,
        backend="python-ldap",
        sync="syncrepl",
        sync_retry_initial=0.2,
        sync_retry_max=1.0,
    )
    options.update(overrides)
    context = PluginContext(config_dir=state_dir, state_dir=state_dir, secrets=SecretStore())
    return LdapSource(LdapOptions.model_validate(options), context)


class Watching:
    """A source whose watch runs in a task, and the notices it announced."""

    def __init__(self, source: LdapSource) -> None:
        self.source = source
        self.notices: list[ChangeNotice] = []
        self.task: asyncio.Task[None] | None = None

    async def persisting(self, within: float = 20.0) -> None:
        """Wait until both searches are past their refresh."""
        deadline = time.monotonic() + within
        while True:
            sync = self.source.sync
            if sync is not None and sync.ready.is_set():
                tables = sync.state.tables.values()
                if all(t.refreshed for t in tables):
                    return
            if self.task is not None and self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, "the watch did not reach its persist phase"
            await asyncio.sleep(0.05)

    async def until(self, check: Callable[[Snapshot], bool], within: float = 20.0) -> Snapshot:
        """Fetch until ``check`` holds for the snapshot (they come from the sync state)."""
        deadline = time.monotonic() + within
        last: Snapshot | None = None
        while True:
            snapshot = await self.source.fetch(None)
            assert snapshot is not None
            assert snapshot.version.startswith("sync:"), "fetch polled instead of syncing"
            last = snapshot
            if check(snapshot):
                return snapshot
            if self.task is not None and self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, f"never held; last snapshot {names(last)}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(source: LdapSource) -> AsyncIterator[Watching]:
    w = Watching(source)
    w.task = asyncio.create_task(source.watch(w.notices.append))
    try:
        await w.persisting()
        yield w
    finally:
        w.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await w.task


def names(snapshot: Snapshot) -> set[str]:
    return {u.username for u in snapshot.users.values()}


def members(snapshot: Snapshot, group: str) -> set[str]:
    (g,) = [g for g in snapshot.groups.values() if g.name == group]
    return {snapshot.users[m].username for m in g.members}


def user_id(snapshot: Snapshot, username: str) -> str:
    (uid,) = [u.id for u in snapshot.users.values() if u.username == username]
    return uid


def announced_users(w: Watching) -> set[str]:
    out: set[str] = set()
    for notice in w.notices:
        if notice.users is not None:
            out |= notice.users
    return out


async def announced(w: Watching, object_id: str, within: float = 10.0) -> None:
    """Wait until a notice named ``object_id`` (a user or a group)."""
    deadline = time.monotonic() + within
    while not any(object_id in (n.users or ()) or object_id in (n.groups or ()) for n in w.notices):
        assert time.monotonic() < deadline, f"{object_id} never announced: {w.notices}"
        await asyncio.sleep(0.02)


async def test_initial_refresh_then_add_modify_rename_delete(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        first = await w.until(lambda s: "alice" in names(s))
        assert names(first) == {"alice", "bob", "carol"}  # dave has no mail: skipped
        assert members(first, "staff") == {"alice", "bob", "carol"}
        assert any(n.everything for n in w.notices), "the first load announces everything"
        assert source.sync is not None and source.sync.full_loads == 2
        assert REGISTRY.get_sample_value("provisiond_source_watch_connected", LDAP) == 1
        age = REGISTRY.get_sample_value("provisiond_source_sync_cookie_age_seconds", LDAP)
        assert age is not None and 0 <= age < 60

        # add
        sync_slapd.modify(seed.person("erin"))
        added = await w.until(lambda s: "erin" in names(s))
        erin = user_id(added, "erin")
        assert added.base == first.version or added.base is not None
        assert added.changed is not None and ("user", erin) in added.changed
        await announced(w, erin)

        # modify: patched into the last snapshot, only that user changed
        sync_slapd.modify(
            f"dn: uid=erin,{seed.PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Chief\n\n"
        )
        modified = await w.until(lambda s: s.users[erin].title == "Chief")
        assert modified.changed == frozenset({("user", erin)})
        assert modified.groups is added.groups or modified.groups == added.groups

        # rename: entryUUID stays, the DN changes; refint rewrites engineering's member
        alice = user_id(modified, "alice")
        sync_slapd.modify(
            f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modrdn\nnewrdn: uid=alice2\n"
            "deleteoldrdn: 1\n\n"
        )
        renamed = await w.until(
            lambda s: s.users[alice].username == "alice2" and "alice2" in members(s, "engineering")
        )
        assert members(renamed, "staff") == {"alice2", "bob", "carol"}
        # refint's rewrite is followed at once, and read back a moment later
        deadline = time.monotonic() + 10
        while source.sync.state.rereads < 1:
            assert time.monotonic() < deadline, "the groups were never read back"
            await asyncio.sleep(0.05)
        reread = await w.until(lambda s: True)
        assert members(reread, "engineering") == {"alice2", "bob"}

        # delete: gone from users and (refint) from the groups
        bob = user_id(renamed, "bob")
        sync_slapd.modify(f"dn: uid=bob,{seed.PEOPLE}\nchangetype: delete\n\n")
        deleted = await w.until(lambda s: bob not in s.users)
        assert deleted.changed is not None and ("user", bob) in deleted.changed
        assert members(deleted, "engineering") == {"alice2"}
        await announced(w, bob)
        assert source.sync.full_loads == 2, "no reload after the first"
    assert source.last_read is None, "fetch never polled"
    assert REGISTRY.get_sample_value("provisiond_source_watch_connected", LDAP) == 0


async def test_group_membership_changes(sync_slapd: Slapd, tmp_path: Path) -> None:
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        await w.until(lambda s: "alice" in names(s))
        sync_slapd.modify(
            f"dn: cn=engineering,{seed.GROUPS}\nchangetype: modify\n"
            f"delete: member\nmember: uid=bob,{seed.PEOPLE}\n-\n"
            f"add: member\nmember: uid=carol,{seed.PEOPLE}\n\n"
        )
        snap = await w.until(lambda s: members(s, "engineering") == {"alice", "carol"})
        (eng,) = [g.id for g in snap.groups.values() if g.name == "engineering"]
        assert snap.changed is not None and ("group", eng) in snap.changed
        await announced(w, eng)
        # a new group, and a nested group renamed (refint rewrites the parent's member)
        sync_slapd.modify(
            f"dn: cn=ops,{seed.GROUPS}\nobjectClass: groupOfNames\ncn: ops\n"
            f"member: uid=bob,{seed.PEOPLE}\n\n"
            f"dn: cn=staff,{seed.GROUPS}\nchangetype: modify\nadd: member\n"
            f"member: cn=ops,{seed.GROUPS}\n\n"
        )
        await w.until(lambda s: "bob" in members(s, "staff"))
        sync_slapd.modify(
            f"dn: cn=ops,{seed.GROUPS}\nchangetype: modrdn\nnewrdn: cn=ops2\ndeleteoldrdn: 1\n\n"
        )
        after = await w.until(lambda s: any(g.name == "ops2" for g in s.groups.values()))
        assert "bob" in members(after, "staff"), "the renamed nested group kept its parent"
        # deleting the group drops it (and refint its member value in staff)
        sync_slapd.modify(f"dn: cn=ops2,{seed.GROUPS}\nchangetype: delete\n\n")
        gone = await w.until(lambda s: not any(g.name == "ops2" for g in s.groups.values()))
        assert members(gone, "staff") == {"alice", "carol"}


async def test_bad_record_is_named_and_the_rest_goes_on(sync_slapd: Slapd, tmp_path: Path) -> None:
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        await w.until(lambda s: "alice" in names(s))
        sync_slapd.modify(seed.person("nomail", mail=False) + seed.person("fred"))
        snap = await w.until(lambda s: "fred" in names(s))
        assert "nomail" not in names(snap)
        assert any(r.record == f"uid=nomail,{seed.PEOPLE}" for r in snap.skipped)


async def test_slapd_restart_mid_changes_loses_nothing(sync_slapd: Slapd, tmp_path: Path) -> None:
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        await w.until(lambda s: "alice" in names(s))
        made: list[str] = []
        failure: list[BaseException] = []

        def change() -> None:
            try:
                for i in range(30):
                    uid = f"r{i:02d}"
                    for _ in range(100):  # while slapd is down, ldapmodify fails: try again
                        try:
                            sync_slapd.modify(seed.person(uid))
                            break
                        except RuntimeError:
                            time.sleep(0.05)
                    else:
                        raise AssertionError(f"could not add {uid}")
                    made.append(uid)
                    if i == 12:
                        sync_slapd.restart(down=0.5)
            except BaseException as exc:
                failure.append(exc)

        writer = threading.Thread(target=change)
        writer.start()
        await asyncio.to_thread(writer.join)
        assert not failure, failure
        assert len(made) == 30
        snap = await w.until(lambda s: set(made) <= names(s), within=30)
        assert set(made) <= names(snap)
        assert source.sync is not None
        assert source.sync.reconnects >= 1, "the watch reconnected"
        assert REGISTRY.get_sample_value("provisiond_source_watch_reconnects_total", LDAP)
        assert source.sync.full_loads == 2, "it resumed from the cookie, no reload"


async def test_a_watch_stopped_by_a_cancel_scope_still_writes_its_checkpoint(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    """How the service stops it: anyio cancels the task group, again at every await.

    The checkpoint used to be written after an await in the watch's cleanup,
    which that cancellation interrupted: a restarted daemon found none and
    reloaded everything.
    """
    source = make(sync_slapd, tmp_path)
    async with anyio.create_task_group() as tg:
        w = Watching(source)
        tg.start_soon(source.watch, w.notices.append)
        await w.persisting()
        tg.cancel_scope.cancel()
    assert (tmp_path / "ldap-syncrepl.checkpoint").exists(), "no checkpoint written on stop"
    again = make(sync_slapd, tmp_path)
    async with watching(again):
        assert again.sync is not None and again.sync.full_loads == 0, "resumed"


async def test_source_restart_resumes_from_the_checkpoint(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        first = await w.until(lambda s: "alice" in names(s))
    assert (tmp_path / "ldap-syncrepl.checkpoint").stat().st_mode & 0o777 == 0o600
    # Changes while no provisiond runs.
    sync_slapd.modify(
        seed.person("gina")
        + f"dn: uid=bob,{seed.PEOPLE}\nchangetype: modify\nreplace: title\ntitle: CEO\n\n"
        + f"dn: uid=carol,{seed.PEOPLE}\nchangetype: delete\n\n"
    )
    again = make(sync_slapd, tmp_path)
    async with watching(again) as w2:
        snap = await w2.until(lambda s: "gina" in names(s) and "carol" not in names(s))
        assert again.sync is not None
        assert again.sync.full_loads == 0, "no search without a cookie: resumed"
        # Only what changed came with its attributes (the rest is UUIDs at most).
        assert again.sync.state.entries_received <= 4
        bob = user_id(snap, "bob")
        assert snap.users[bob].title == "CEO"
        assert snap.base == first.version, "the first snapshot continues from the committed one"
        assert snap.changed is not None and ("user", bob) in snap.changed
    assert again.last_read is None, "no poll"


async def test_refused_cookie_gets_one_full_reload(sync_slapd: Slapd, tmp_path: Path) -> None:
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        await w.until(lambda s: "alice" in names(s))
    path = tmp_path / "ldap-syncrepl.checkpoint"
    raw = msgspec.msgpack.decode(path.read_bytes())
    # A cookie older than every entry: syncprov (with reload hints) answers
    # e-syncRefreshRequired. An entry in the stale state that is gone now.
    stale = "rid=000,csn=19700101000000.000000Z#000000#000#000000"
    raw["cookies"] = {"user": stale, "group": stale}
    ghost = dict(next(iter(raw["users"].values())))
    ghost["dn"] = f"uid=ghost,{seed.PEOPLE}"
    ghost["user"] = {**ghost["user"], "id": "ghost-id", "username": "ghost", "email": "g@x.org"}
    raw["users"]["ghost-uuid"] = ghost
    path.write_bytes(msgspec.msgpack.encode(raw))
    again = make(sync_slapd, tmp_path)
    async with watching(again) as w2:
        snap = await w2.until(lambda s: "ghost" not in names(s) and "alice" in names(s))
        assert again.sync is not None
        assert again.sync.full_loads == 2, "exactly one reload per search"
        sync_slapd.modify(seed.person("hank"))
        await w2.until(lambda s: "hank" in names(s))
        assert again.sync.full_loads == 2, "then it persists again"
        assert names(snap) == {"alice", "bob", "carol"}


async def test_no_syncprov_falls_back_to_polls(plain_slapd: Slapd, tmp_path: Path) -> None:
    auto = make(plain_slapd, tmp_path, sync="auto")
    lines = await auto.check()
    assert any("no syncprov" in line and "polls" in line for line in lines), lines
    notices: list[ChangeNotice] = []
    task = asyncio.create_task(auto.watch(notices.append))
    await asyncio.sleep(1.0)
    assert not task.done(), "auto: the watch waits without announcing"
    snapshot = await auto.fetch(None)
    assert snapshot is not None and "alice" in names(snapshot)
    assert auto.last_read == "full", "fetch polled"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert notices == []

    strict = make(plain_slapd, tmp_path, sync="syncrepl")
    with pytest.raises(SourceError, match="sync: syncrepl, but the server has no syncprov"):
        await strict.check()
    with pytest.raises(SourceError, match="no syncprov"):
        await asyncio.wait_for(strict.watch(notices.append), 10)


async def test_check_says_syncrepl_when_the_server_has_syncprov(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    lines = await make(sync_slapd, tmp_path, sync="auto").check()
    assert any("syncrepl (the server has syncprov" in line for line in lines), lines


def test_sync_options_are_checked() -> None:
    base = {
        "url": "ldap://x",
        "bind_dn": "cn=a,dc=b",
        "bind_password_file": "p",
        "user_base": "dc=b",
    }
    with pytest.raises(ValueError, match="sync"):
        LdapOptions.model_validate({**base, "sync": "push"})
    with pytest.raises(ValueError, match="sync_retry_max"):
        LdapOptions.model_validate({**base, "sync_retry_initial": 5, "sync_retry_max": 1})
    with pytest.raises(ValueError, match="in_chain"):
        LdapOptions.model_validate({**base, "sync": "syncrepl", "nested_groups": "in_chain"})
    assert LdapOptions.model_validate(base).sync == "auto"


async def test_without_refint_the_group_read_agrees_with_a_poll(tmp_path: Path) -> None:
    """No refint: a renamed member's old DN stays in the group, so it is no member any more.

    The rename is followed at once (as refint would), and the group read a
    moment later puts what the server holds back: the same as a poll reads.
    """
    work = tmp_path / "norefint"
    work.mkdir()
    server = start(work, syncprov=True, refint=False)
    try:
        server.modify(seed.base_ldif())
        source = make(server, tmp_path)
        async with watching(source) as w:
            await w.until(lambda s: "alice" in names(s))
            server.modify(
                f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modrdn\nnewrdn: uid=alice2\n"
                "deleteoldrdn: 1\n\n"
            )
            synced = await w.until(
                lambda s: "alice2" in names(s) and members(s, "engineering") == {"bob"}
            )
        polled = await make(server, tmp_path, sync="poll").fetch(None)
        assert polled is not None
        assert members(polled, "engineering") == members(synced, "engineering")
    finally:
        server.stop()


async def test_unreadable_checkpoint_is_ignored_with_a_full_load(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    (tmp_path / "ldap-syncrepl.checkpoint").write_bytes(b"\x93not msgpack of ours")
    source = make(sync_slapd, tmp_path)
    with capture_logs() as logged:
        async with watching(source) as w:
            snap = await w.until(lambda s: "alice" in names(s))
            assert names(snap) == {"alice", "bob", "carol"}
            assert source.sync is not None and source.sync.full_loads == 2
    assert "ldap_sync_checkpoint_unreadable" in [e["event"] for e in logged]


async def test_a_size_limit_that_stops_the_refresh_falls_back_to_polls(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    """The reader may read 50 entries per search; paged polls pass it, a sync search cannot."""
    sync_slapd.modify(seed.bulk_ldif(60))
    auto = make(sync_slapd, tmp_path, sync="auto")
    lines = await auto.check()
    assert any("incremental polls, since" in line and "size=unlimited" in line for line in lines)
    notices: list[ChangeNotice] = []
    task = asyncio.create_task(auto.watch(notices.append))
    await asyncio.sleep(1.0)
    assert not task.done(), "auto: the watch waits without announcing"
    snapshot = await auto.fetch(None)
    assert snapshot is not None and len(snapshot.users) == 63
    assert auto.last_read == "full", "fetch polled (paged)"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert notices == []

    strict = make(sync_slapd, tmp_path, sync="syncrepl")
    with pytest.raises(SourceError, match=r"sizeLimitExceeded.*size=unlimited"):
        await strict.check()
    with pytest.raises(SourceError, match="cannot be paged"):
        await asyncio.wait_for(strict.watch(notices.append), 10)


async def test_over_starttls_and_ldaps_with_the_certificate_checked(tmp_path: Path) -> None:
    """The persistent searches are secured like the reads; an unknown CA is refused."""
    _, cert, key = write_ca_and_server(tmp_path / "pki", ca_name="Test CA", ips=["127.0.0.1"])
    write_ca_and_server(tmp_path / "other", ca_name="Other CA", ips=["127.0.0.1"])
    other = tmp_path / "other" / "ca.pem"
    work = tmp_path / "tls-slapd"
    work.mkdir()
    server = start(work, tls=(cert, key), syncprov=True)
    ca = tmp_path / "pki" / "ca.pem"
    try:
        server.modify(seed.base_ldif())
        for url, start_tls in ((server.url, True), (server.ldaps_url, False)):
            state = tmp_path / f"state-{start_tls}"
            state.mkdir()
            source = make(server, state, url=url, start_tls=start_tls, ca_file=str(ca))
            async with watching(source) as w:
                await w.until(lambda s: "alice" in names(s))
        state = tmp_path / "state-other"
        state.mkdir()
        refused = make(server, state, url=server.ldaps_url, ca_file=str(other))
        task = asyncio.create_task(refused.watch(lambda notice: None))
        await asyncio.sleep(1.5)
        assert refused.sync is not None
        assert not refused.sync.ready.is_set(), "an unknown CA must not be trusted"
        assert refused.sync.reconnects >= 1, "retried with backoff, as a server that is down"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        server.stop()


async def test_locate_names_the_entry_from_the_sync_state(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    """A delivery's message names the DN (issue 12, defect 4): from the sync state, no poll."""
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        first = await w.until(lambda s: "alice" in names(s))
        alice = user_id(first, "alice")
        assert source.locate("user", alice) == f"uid=alice,{seed.PEOPLE}"
        (staff,) = [g.id for g in first.groups.values() if g.name == "staff"]
        assert source.locate("group", staff) == f"cn=staff,{seed.GROUPS}"
        assert source.locate("user", "no-such-id") is None
        sync_slapd.modify(
            f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modrdn\nnewrdn: uid=alice2\n"
            "deleteoldrdn: 1\n\n"
        )
        await w.until(lambda s: s.users[alice].username == "alice2")
        assert source.locate("user", alice) == f"uid=alice2,{seed.PEOPLE}"
    assert source.last_read is None, "locate never polled"


async def test_a_first_refresh_longer_than_timeout_is_waited_for(tmp_path: Path) -> None:
    """The first fetch waits for a refresh that outlasts ``timeout`` while entries arrive.

    Polling instead would load the whole directory a second time, beside the
    refresh (issue 12): the first cycle of a daemon starting on a large directory.
    """
    count = 5000
    work = tmp_path / "slapd"
    work.mkdir()
    ldif = tmp_path / "seed.ldif"
    ldif.write_text(seed.base_ldif() + seed.bulk_ldif(count))
    # A content synchronisation search cannot be paged: the reader's limit must allow it.
    server = start(work, syncprov=True, preload=ldif, size_limit=count + 100)
    try:
        source = make(server, tmp_path, timeout=0.25)
        task = asyncio.create_task(source.watch(lambda notice: None))
        try:
            while source.sync is None or not source.sync.serving:
                assert not task.done(), task
                await asyncio.sleep(0.002)
            started = time.monotonic()
            snapshot = await source.fetch(None)
            waited = time.monotonic() - started
            assert snapshot is not None
            assert snapshot.version.startswith("sync:"), "fetch polled beside the refresh"
            assert source.last_read is None, "fetch polled beside the refresh"
            assert len(snapshot.users) >= count
            assert source.sync is not None and source.sync.full_loads == 2
            # The case at hand: the refresh took longer than ``timeout``.
            assert waited > 0.25, f"the refresh took {waited:.2f} s only"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        server.stop()


async def test_a_fetch_while_the_checkpoint_loads_waits_for_it(
    sync_slapd: Slapd, tmp_path: Path
) -> None:
    """The first cycle runs beside the watch's start: it must not poll while the checkpoint loads.

    A poll there reads the whole directory the restart was meant to spare.
    """
    source = make(sync_slapd, tmp_path)
    async with watching(source) as w:
        await w.until(lambda s: "alice" in names(s))
    assert (tmp_path / "ldap-syncrepl.checkpoint").exists()
    again = make(sync_slapd, tmp_path)
    task = asyncio.create_task(again.watch(lambda notice: None))
    try:
        for _ in range(100):  # the watch's first step builds the Syncrepl, then awaits
            if again.sync is not None:
                break
            await asyncio.sleep(0)
        # The watch is loading its checkpoint in a thread right now.
        assert again.sync is not None and not again.sync.ready.is_set()
        snapshot = await again.fetch(None)
        assert snapshot is not None
        assert snapshot.version.startswith("sync:"), "fetch polled while the checkpoint loaded"
        assert again.last_read is None
        assert names(snapshot) == {"alice", "bob", "carol"}
        assert again.sync.full_loads == 0, "resumed from the checkpoint"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
