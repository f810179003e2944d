"""The events cursor file across restarts of the jumpcloud source, against the FAKE JumpCloud.

The server is fake_jumpcloud.py: a fake built from JumpCloud's documented
wire format (REST v1/v2 and the Directory Insights events API), not
JumpCloud. A "restart" is a new source object on the same state directory,
as a new provisiond process would make, after the first one's watch stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec
from structlog.testing import capture_logs

from daemon.model import Snapshot
from daemon.sources.base import ChangeNotice
from daemon.sources.jumpcloud import cursor as saved_cursor
from daemon.sources.jumpcloud.events import RETENTION, parse_time
from tests.jumpcloud.fake_jumpcloud import FakeJumpCloud
from tests.jumpcloud.test_jumpcloud_events import MakeSource, Steps, directory, uid, watching

LIST_USERS = "/api/systemusers"


def full_reads(fake: FakeJumpCloud) -> int:
    """How many times the fake served the list of every user (a full read)."""
    return fake.api_paths().count(LIST_USERS)


def events_named(logs: list[dict[str, object]], prefix: str) -> list[dict[str, object]]:
    return [e for e in logs if str(e["event"]).startswith(prefix)]


async def first_run(fake: FakeJumpCloud, make_source: MakeSource) -> Snapshot:
    """A source reads everything, re-reads one change, then sees one more it does not
    re-read before it stops: the last snapshot it returned."""
    steps = Steps()
    source = make_source(sleep=steps)
    async with watching(source, steps):
        first = await source.fetch(None)
        assert first is not None and source.last_read == "full"
        fake.update_user(uid(5), department="Finance")
        await steps.poll()
        last = await source.fetch(first.version)
        assert last is not None and source.last_read == "incremental"
        # Announced, and stopped before any fetch re-read it.
        fake.update_user(uid(7), jobTitle="Announced before the stop")
        await steps.poll()
    await source.aclose()
    return last


async def test_a_restart_resumes_from_the_cursor_with_no_full_read_and_no_lost_event(
    fake: FakeJumpCloud, make_source: MakeSource, tmp_path: Path
) -> None:
    directory(fake)
    with capture_logs() as logs:
        last = await first_run(fake, make_source)
    (missing,) = events_named(logs, "jumpcloud_events_cursor_missing")
    assert missing["file"] == str(tmp_path / saved_cursor.CURSOR_NAME)
    path = tmp_path / saved_cursor.CURSOR_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    stopped_at = time.time()
    # While no provisiond runs: a change, a membership change.
    fake.update_user(uid(6), jobTitle="Changed while stopped")
    fake.add_member("g1", uid(25))

    fake.requests.clear()
    fake.event_queries.clear()
    steps = Steps()
    source = make_source(sleep=steps)
    notices: list[ChangeNotice] = []
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            # As the daemon does: the watch is started, and the first cycle fetches at once.
            tg.start_soon(source.watch, notices.append)
            snapshot = await source.fetch(last.version)
            tg.cancel_scope.cancel()
    (restored,) = events_named(logs, "jumpcloud_events_cursor_restored")
    assert restored["pending"] == 1  # uid(7), announced before the stop
    assert source.resumed and source.last_read == "incremental"
    assert full_reads(fake) == 0
    assert sorted(fake.api_paths()) == sorted(
        [
            f"/api/systemusers/{uid(6)}",
            f"/api/systemusers/{uid(7)}",
            "/api/v2/usergroups/g1",
            "/api/v2/usergroups/g1/members",
        ]
    )
    # It resumed where the first run read up to, less the overlap; not from now.
    start = parse_time(fake.event_queries[0]["start_time"])
    assert start is not None
    assert stopped_at - source.options.events_overlap - 5 <= start
    assert start <= stopped_at - source.options.events_overlap + 1
    assert snapshot is not None and snapshot.base == last.version
    assert snapshot.changed == {("user", uid(6)), ("user", uid(7)), ("group", "g1")}
    assert snapshot.users[uid(6)].title == "Changed while stopped"
    assert snapshot.users[uid(7)].title == "Announced before the stop"
    assert snapshot.users[uid(5)].department == "Finance"
    # Whole and true: what a full read gives now.
    reader = make_source(events=False)
    full = await reader.fetch(None)
    assert full is not None
    assert (snapshot.users, snapshot.groups) == (full.users, full.groups)


async def test_a_corrupt_cursor_file_gives_one_full_read_and_says_so(
    fake: FakeJumpCloud, make_source: MakeSource, tmp_path: Path
) -> None:
    directory(fake)
    last = await first_run(fake, make_source)
    path = tmp_path / saved_cursor.CURSOR_NAME
    path.write_bytes(b"\x93not a cursor of ours")
    fake.requests.clear()
    steps = Steps()
    source = make_source(sleep=steps)
    with capture_logs() as logs:
        async with watching(source, steps):
            snapshot = await source.fetch(last.version)
            assert source.last_read == "full" and not source.resumed
            # Then it goes on from the events: one full read, not one per fetch.
            fake.update_user(uid(3), jobTitle="After the full read")
            await steps.poll()
            after = await source.fetch(snapshot.version if snapshot else last.version)
    assert source.last_read == "incremental"
    assert after is not None and after.users[uid(3)].title == "After the full read"
    assert full_reads(fake) == 1
    (line,) = events_named(logs, "jumpcloud_events_cursor_unreadable")
    assert line["file"] == str(path) and "a full read follows" in str(line["note"])
    # The watch wrote a good file again when it stopped.
    assert saved_cursor.decode(path.read_bytes(), source.options).version == after.version


async def test_a_cursor_older_than_the_events_retention_gives_a_full_read(
    fake: FakeJumpCloud, make_source: MakeSource, tmp_path: Path
) -> None:
    directory(fake)
    await first_run(fake, make_source)
    path = tmp_path / saved_cursor.CURSOR_NAME
    steps = Steps()
    source = make_source(sleep=steps)
    saved = saved_cursor.decode(path.read_bytes(), source.options)
    long_ago = time.time() - RETENTION - 86400
    old = msgspec.structs.replace(saved, newest=long_ago, polled_at=long_ago, seen={})
    path.write_bytes(msgspec.msgpack.encode(old))
    fake.requests.clear()
    with capture_logs() as logs:
        async with watching(source, steps):
            await source.fetch(None)
    assert source.last_read == "full" and full_reads(fake) == 1
    (line,) = events_named(logs, "jumpcloud_events_cursor_expired")
    assert line["retention_days"] == 90 and float(str(line["age_days"])) > 90


async def test_a_cursor_for_other_settings_is_ignored(
    fake: FakeJumpCloud, make_source: MakeSource, tmp_path: Path
) -> None:
    directory(fake)
    await first_run(fake, make_source)
    fake.requests.clear()
    steps = Steps()
    source = make_source(sleep=steps, groups=False)
    with capture_logs() as logs:
        async with watching(source, steps):
            snapshot = await source.fetch(None)
    assert source.last_read == "full" and snapshot is not None and snapshot.groups == {}
    (line,) = events_named(logs, "jumpcloud_events_cursor_unreadable")
    assert "other settings" in str(line["error"])
