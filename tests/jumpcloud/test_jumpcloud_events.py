"""The jumpcloud source's event watch and its re-reads, against the FAKE JumpCloud.

The server is fake_jumpcloud.py: a fake built from JumpCloud's documented
wire format (REST v1/v2 and the Directory Insights events API), not JumpCloud.
A change is made on the fake (which logs the event JumpCloud would), the
watch announces it, and the next fetch re-reads that object alone; the
fake's request log shows what was read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.metrics import REGISTRY
from daemon.model import Snapshot
from daemon.sources.base import ChangeNotice, SourceError
from daemon.sources.jumpcloud import JumpCloudOptions, JumpCloudSource
from daemon.sources.jumpcloud.events import MAX_PAGES, PAGE_LIMIT
from daemon.sources.jumpcloud.source import REFUSED_RETRY
from tests.jumpcloud.conftest import API_KEY
from tests.jumpcloud.fake_jumpcloud import FakeJumpCloud, system_user

MakeSource = Callable[..., JumpCloudSource]


def uid(n: int) -> str:
    return str(system_user(n)["_id"])


def directory(fake: FakeJumpCloud, users: int = 30) -> None:
    """Users 0..n-1 (user 1 manages user 4), groups g1 (users 0-9) and g2 (10-19)."""
    fake.users = [system_user(n) for n in range(users)]
    fake.user(uid(4))["manager"] = uid(1)
    fake.groups = [
        {"id": "g1", "name": "Engineering", "type": "user_group"},
        {"id": "g2", "name": "Sales", "type": "user_group"},
    ]
    fake.members = {"g1": [uid(n) for n in range(10)], "g2": [uid(n) for n in range(10, 20)]}


class Steps:
    """The watch's sleep: each one records the wait and parks until the test lets it go on."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._go = anyio.Event()
        self._parked = anyio.Event()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self._parked.set()
        await self._go.wait()
        self._go = anyio.Event()

    async def parked(self) -> None:
        with anyio.fail_after(5):
            await self._parked.wait()

    async def poll(self) -> None:
        """Let the watch poll once more, and wait until it sleeps again."""
        self._parked = anyio.Event()
        self._go.set()
        await self.parked()


@asynccontextmanager
async def watching(
    source: JumpCloudSource, steps: Steps | None = None
) -> AsyncIterator[list[ChangeNotice]]:
    notices: list[ChangeNotice] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.watch, notices.append)
        if steps is not None:
            await steps.parked()  # the first poll is done
        yield notices
        tg.cancel_scope.cancel()


class Started(NamedTuple):
    source: JumpCloudSource
    steps: Steps
    first: Snapshot


Start = Callable[..., Awaitable[Started]]


@pytest.fixture
def start(fake: FakeJumpCloud, make_source: MakeSource) -> Start:
    """The setup most tests share: :func:`directory` on the fake, a source whose watch
    sleeps in :class:`Steps`, and its first fetch (a full read). Keyword arguments
    are source options."""

    async def started(**options: Any) -> Started:
        directory(fake)
        steps = Steps()
        source = make_source(sleep=steps, **options)
        first = await source.fetch(None)
        assert first is not None and source.last_read == "full"
        return Started(source, steps, first)

    return started


def watch_up() -> float | None:
    return REGISTRY.get_sample_value("provisiond_source_watch_connected", {"source": "jumpcloud"})


def events_received() -> float:
    return REGISTRY.get_sample_value("provisiond_source_events_total", {"source": "jumpcloud"}) or 0


async def test_a_change_is_announced_and_only_that_user_is_read_again(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start()
    before = events_received()
    async with watching(source, steps) as notices:
        assert notices == []
        fake.update_user(uid(5), department="Finance")
        await steps.poll()
        assert [(n.users, n.groups) for n in notices] == [({uid(5)}, frozenset())]
        assert events_received() == before + 1
        fake.requests.clear()
        snapshot = await source.fetch(first.version)
        assert snapshot is not None and source.last_read == "incremental"
        assert fake.api_paths() == [f"/api/systemusers/{uid(5)}"]
        assert snapshot.base == first.version and snapshot.version != first.version
        assert snapshot.changed == {("user", uid(5))}
        assert snapshot.users[uid(5)].department == "Finance"
        assert snapshot.users.keys() == first.users.keys() and snapshot.groups == first.groups
        # The event is in the next poll's overlap: it is not announced twice.
        await steps.poll()
        assert len(notices) == 1 and events_received() == before + 1
        # Nothing new: the poll's fetch is free and says "unchanged".
        fake.requests.clear()
        assert await source.fetch(snapshot.version) is None
        assert fake.api_paths() == []


async def test_watch_announces_within_the_poll_interval(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    directory(fake)
    source = make_source(sleep=anyio.sleep, events_interval=0.5)
    first = await source.fetch(None)
    assert first is not None
    announced = anyio.Event()
    notices: list[ChangeNotice] = []

    def announce(notice: ChangeNotice) -> None:
        notices.append(notice)
        announced.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(source.watch, announce)
        await anyio.sleep(0.6)  # the watch is polling
        changed_at = time.monotonic()
        fake.update_user(uid(7), jobTitle="Director")
        with anyio.fail_after(5):
            await announced.wait()
        lag = time.monotonic() - changed_at
        snapshot = await source.fetch(first.version)
        tg.cancel_scope.cancel()
    print(f"announced {lag:.3f}s after the change (interval 0.5s)")
    # Within one poll interval; the slack is for a loaded machine, not a speed
    # target (bench/jumpcloud_events.py measures the lag).
    assert lag < 0.5 + 2.0, f"announced {lag:.2f}s after the change"
    assert snapshot is not None and snapshot.users[uid(7)].title == "Director"


async def test_membership_change_reads_that_group_again(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, first = await start()
    async with watching(source, steps) as notices:
        fake.add_member("g1", uid(25))
        fake.remove_member("g2", uid(10))
        await steps.poll()
        assert notices[-1].groups == {"g1", "g2"} and notices[-1].users == frozenset()
        fake.requests.clear()
        snapshot = await source.fetch(first.version)
    assert snapshot is not None
    assert sorted(fake.api_paths()) == [
        "/api/v2/usergroups/g1",
        "/api/v2/usergroups/g1/members",
        "/api/v2/usergroups/g2",
        "/api/v2/usergroups/g2/members",
    ]
    assert uid(25) in snapshot.groups["g1"].members
    assert uid(10) not in snapshot.groups["g2"].members
    assert snapshot.changed == {("group", "g1"), ("group", "g2")}


async def test_a_new_user_joins_the_groups_that_list_them(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start()
    async with watching(source, steps):
        fake.create_user(system_user(99, manager=uid(1)))
        fake.add_member("g2", uid(99))
        await steps.poll()
        snapshot = await source.fetch(first.version)
    assert snapshot is not None
    assert snapshot.users[uid(99)].manager == uid(1)
    assert uid(99) in snapshot.groups["g2"].members
    assert snapshot.changed == {("user", uid(99)), ("group", "g2")}


async def test_group_added_to_before_its_user_was_announced(
    fake: FakeJumpCloud, start: Start
) -> None:
    """The membership event's re-read comes first; the user's own event fills the group."""
    source, steps, first = await start()
    async with watching(source, steps):
        fake.users.append(system_user(98))  # created, but its event is not visible yet
        fake.add_member("g1", uid(98))
        await steps.poll()
        # g1 lists a user not read yet: it cannot hold them, so nothing moved.
        assert await source.fetch(first.version) is None
        fake.log_event("user_create", resource={"type": "user", "id": uid(98)})
        await steps.poll()
        fake.requests.clear()
        last = await source.fetch(first.version)
    assert last is not None and uid(98) in last.groups["g1"].members
    assert fake.api_paths() == [f"/api/systemusers/{uid(98)}"]
    assert last.changed == {("user", uid(98)), ("group", "g1")}


async def test_a_deleted_user_is_removed_from_groups_and_as_manager(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start()
    assert first.users[uid(4)].manager == uid(1)
    async with watching(source, steps):
        fake.delete_user(uid(1))
        await steps.poll()
        fake.requests.clear()
        with capture_logs() as logs:
            snapshot = await source.fetch(first.version)
    assert snapshot is not None
    assert fake.api_paths() == [f"/api/systemusers/{uid(1)}"]  # the rest follows locally
    assert uid(1) not in snapshot.users
    assert uid(1) not in snapshot.groups["g1"].members
    assert snapshot.users[uid(4)].manager is None
    assert snapshot.changed == {("user", uid(1)), ("user", uid(4)), ("group", "g1")}
    gone = [e for e in logs if "gone" in e["event"]]
    assert gone and gone[0]["user"] == uid(1)


async def test_group_renamed_created_and_deleted(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, first = await start()
    async with watching(source, steps):
        fake.rename_group("g1", "Platform")
        fake.delete_group("g2")
        fake.create_group("g3", "Support")
        fake.add_member("g3", uid(2))
        await steps.poll()
        snapshot = await source.fetch(first.version)
    assert snapshot is not None
    assert snapshot.groups["g1"].name == "Platform"
    assert "g2" not in snapshot.groups
    assert snapshot.groups["g3"].members == (uid(2),)
    assert snapshot.changed == {("group", "g1"), ("group", "g2"), ("group", "g3")}


async def test_an_invalid_record_is_skipped_with_its_id(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, first = await start()
    async with watching(source, steps):
        fake.update_user(uid(3), email="not-an-address")
        await steps.poll()
        snapshot = await source.fetch(first.version)
    assert snapshot is not None and uid(3) not in snapshot.users
    (skip,) = snapshot.skipped
    assert (skip.object_id, skip.field) == (uid(3), "email")
    assert ("user", uid(3)) in snapshot.changed  # the engine keeps its last good record


async def test_an_event_for_an_object_that_cannot_be_read_is_logged(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start()
    stranger = "5f00000000000000deadbeef"
    async with watching(source, steps) as notices:
        fake.log_event("user_update", resource={"type": "user", "id": stranger})
        await steps.poll()
        assert notices[-1].users == {stranger}
        with capture_logs() as logs:
            assert await source.fetch(first.version) is None  # nothing moved
    (line,) = [e for e in logs if e.get("user") == stranger]
    assert "404" in line["event"] and line["where"].endswith(f"/api/systemusers/{stranger}")


async def test_sign_ins_and_device_events_change_nothing(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, first = await start()
    async with watching(source, steps) as notices:
        fake.log_event("user_login_attempt", resource={"type": "user", "id": uid(1)})
        fake.log_event("system_update", resource={"type": "system", "id": "s1"})
        await steps.poll()
        assert notices == []
        fake.requests.clear()
        assert await source.fetch(first.version) is None
        assert fake.api_paths() == []


async def test_late_event_in_the_overlap_is_still_seen(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, _ = await start(events_overlap=60)
    async with watching(source, steps) as notices:
        fake.update_user(uid(2), jobTitle="A")
        await steps.poll()
        # Indexed late: stamped 20 s ago, visible only now.
        fake.user(uid(6))["jobTitle"] = "B"
        fake.log_event("user_update", at=time.time() - 20, resource={"type": "user", "id": uid(6)})
        await steps.poll()
        assert [n.users for n in notices] == [{uid(2)}, {uid(6)}]
    # Each poll starts an overlap before the newest event seen.
    assert all("search_after" not in q for q in fake.event_queries)


async def test_flood_of_events_collapses_to_one_full_read(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start()
    async with watching(source, steps) as notices:
        for _ in range(MAX_PAGES * PAGE_LIMIT + 1):
            fake.log_event("user_update", resource={"type": "user", "id": uid(0)})
        fake.user(uid(0))["jobTitle"] = "Flooded"
        queries = len(fake.event_queries)
        with capture_logs() as logs:
            await steps.poll()
        assert len(fake.event_queries) - queries == MAX_PAGES  # bounded
        assert notices[-1].everything
        assert any("flood" in e["event"] for e in logs)
        snapshot = await source.fetch(first.version)
        assert source.last_read == "full" and snapshot is not None
        assert snapshot.users[uid(0)].title == "Flooded"
        # The cursor skipped past the flood: the next poll is quiet.
        await steps.poll()
        assert len(notices) == 1


async def test_too_many_changed_objects_read_everything(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, first = await start(events_max_changes=5)
    async with watching(source, steps) as notices:
        for n in range(6):
            fake.update_user(uid(n), jobTitle="Changed")
        await steps.poll()
        assert notices[-1].everything
        snapshot = await source.fetch(first.version)
    assert source.last_read == "full" and snapshot is not None
    assert snapshot.changed is None and snapshot.base is None


async def test_an_event_that_cannot_be_mapped_reads_everything(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start()
    async with watching(source, steps) as notices:
        connection = {"from": {"type": "user_group"}, "to": {"type": "user", "object_id": uid(1)}}
        fake.log_event("association_change", association={"op": "add", "connection": connection})
        with capture_logs() as logs:
            await steps.poll()
        assert notices[-1].everything
        await source.fetch(first.version)
    assert source.last_read == "full"
    (line,) = [e for e in logs if "cannot be mapped" in e["event"]]
    assert "group without a valid id" in line["reason"]


async def test_refused_feed_says_so_and_falls_back_to_polling(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    directory(fake)
    fake.insights_status = 403
    steps = Steps()
    source = make_source(sleep=steps)
    _, line = await source.check()
    assert line.startswith("warning: JumpCloud Directory Insights")
    assert "HTTP 403" in line and "api_key_file" in line and "events: false" in line
    first = await source.fetch(None)
    assert first is not None
    with capture_logs() as logs:
        async with watching(source, steps) as notices:
            assert steps.waits == [REFUSED_RETRY]
            assert watch_up() == 0  # the watch is down while the key is refused
            await steps.poll()  # tried again later: still refused, logged once
            fake.update_user(uid(5), jobTitle="Seen by the poll")
            snapshot = await source.fetch(first.version)
            assert source.last_read == "full" and snapshot is not None
            assert snapshot.users[uid(5)].title == "Seen by the poll"
            fake.insights_status = None
            await steps.poll()
            assert steps.waits[-1] == source.options.events_interval
            assert watch_up() == 1
            # The event logged meanwhile moved the read position: the cursor is fresh.
            age = REGISTRY.get_sample_value(
                "provisiond_source_sync_cookie_age_seconds", {"source": "jumpcloud"}
            )
            assert age is not None and age < 60
    refused = [e for e in logs if "refused" in e["event"]]
    assert len(refused) == 1 and "api_key_file" in refused[0]["event"]
    assert "events: false" in refused[0]["event"]
    assert any("accepts the API key now" in e["event"] for e in logs)
    assert notices  # the event logged meanwhile is announced once the feed answers


async def test_throttled_feed_waits_as_retry_after_asks(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, _ = await start()
    fake.event_faults = [(429, {"Retry-After": "7"}, None)]
    async with watching(source, steps):
        assert steps.waits == [7.0]
        await steps.poll()
        assert steps.waits == [7.0, source.options.events_interval]


async def test_malformed_answers_are_logged_and_backed_off(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, _ = await start(events_interval=1)
    fake.event_faults = [
        (200, {"Content-Type": "application/json"}, "[{not json"),
        (200, {"Content-Type": "application/json"}, '{"an": "object"}'),
        (502, {}, None),
    ]
    with capture_logs() as logs:
        async with watching(source, steps) as notices:
            await steps.poll()
            await steps.poll()
            fake.update_user(uid(8), jobTitle="After the faults")
            await steps.poll()
            assert notices and notices[-1].users == {uid(8)}
    assert steps.waits == [1, 2, 4, 1]
    (warning,) = [e for e in logs if "cannot be read" in e["event"]]
    assert "/insights/directory/v1/events" in warning["error"]
    assert "not JSON" in warning["error"]
    assert any("can be read again" in e["event"] for e in logs)


async def test_a_failed_re_read_keeps_the_change_for_the_next_fetch(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start(max_retries=0)
    async with watching(source, steps):
        fake.update_user(uid(9), jobTitle="Retried")
        await steps.poll()
        fake.faults = [(500, {})]
        with pytest.raises(SourceError, match="HTTP 500"):
            await source.fetch(first.version)
        snapshot = await source.fetch(first.version)
    assert snapshot is not None and source.last_read == "incremental"
    assert snapshot.users[uid(9)].title == "Retried"


async def test_without_the_watch_every_fetch_reads_everything(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    directory(fake)
    source = make_source()
    first = await source.fetch(None)
    assert first is not None
    fake.requests.clear()
    assert await source.fetch(first.version) is None  # read, and unchanged
    assert source.last_read == "full" and "/api/systemusers" in fake.paths()
    fake.user(uid(3))["jobTitle"] = "Polled"
    second = await source.fetch(first.version)
    assert second is not None and second.version != first.version and second.changed is None


async def test_full_read_after_is_the_safety_net(fake: FakeJumpCloud, start: Start) -> None:
    source, steps, first = await start(full_read_after=600)
    async with watching(source, steps):
        fake.user(uid(3))["jobTitle"] = "No event for this"  # a change JumpCloud did not log
        assert await source.fetch(first.version) is None
        later = time.monotonic() + 601
        source.monotonic = lambda: later
        source._feed_ok_at = later  # the feed is healthy at that time too
        snapshot = await source.fetch(first.version)
    assert source.last_read == "full" and snapshot is not None
    assert snapshot.users[uid(3)].title == "No event for this"


async def test_events_off_never_asks_the_feed(fake: FakeJumpCloud, make_source: MakeSource) -> None:
    directory(fake)
    source = make_source(sleep=anyio.sleep, events=False)
    with anyio.move_on_after(0.2):
        await source.watch(lambda notice: None)
    assert fake.event_queries == []
    _, line = await source.check()
    assert "off (events: false)" in line


def test_events_options() -> None:
    def options(**extra: Any) -> JumpCloudOptions:
        return JumpCloudOptions.model_validate({"api_key_file": "k", **extra})

    assert options().events_base() == "https://api.jumpcloud.com"
    eu = options(base_url="https://console.eu.jumpcloud.com")
    assert eu.events_base() == "https://api.eu.jumpcloud.com"
    assert options(base_url="http://127.0.0.1:8080").events_base() == "http://127.0.0.1:8080"
    assert options(events_url="https://di.example").events_base() == "https://di.example"
    for bad in (
        {"events_interval": 0.1},
        {"events_interval": 301},
        {"events_overlap": 1},
        {"events_max_changes": 0},
        {"full_read_after": 5},
        {"events_url": "http://di.example"},
    ):
        with pytest.raises(ValueError):
            options(**bad)


async def test_a_manager_created_later_is_linked_to_their_reports(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    directory(fake)
    fake.user(uid(6))["manager"] = uid(77)  # not a user yet: dropped downstream
    steps = Steps()
    source = make_source(sleep=steps)
    first = await source.fetch(None)
    assert first is not None and first.users[uid(6)].manager is None
    async with watching(source, steps):
        fake.create_user(system_user(77))
        await steps.poll()
        fake.requests.clear()
        snapshot = await source.fetch(first.version)
    assert snapshot is not None and snapshot.users[uid(6)].manager == uid(77)
    assert fake.api_paths() == [f"/api/systemusers/{uid(77)}"]
    assert snapshot.changed == {("user", uid(77)), ("user", uid(6))}


async def test_the_api_key_never_reaches_the_log(
    fake: FakeJumpCloud, make_source: MakeSource
) -> None:
    directory(fake)
    fake.event_faults = [(500, {}, f"internal error for key {API_KEY}")]
    steps = Steps()
    source = make_source(sleep=steps)
    with capture_logs() as logs:
        async with watching(source, steps):
            pass
        steps_wrong = Steps()
        wrong = make_source(key="jc-wrong-key-fedcba9876543210", sleep=steps_wrong)
        async with watching(wrong, steps_wrong):
            pass
    text = repr(logs)
    assert "HTTP 500" in text and "HTTP 401" in text
    assert API_KEY not in text and "jc-wrong-key-fedcba9876543210" not in text


async def test_without_groups_membership_events_are_ignored(
    fake: FakeJumpCloud, start: Start
) -> None:
    source, steps, first = await start(groups=False)
    assert first.groups == {}
    async with watching(source, steps) as notices:
        fake.add_member("g1", uid(25))
        fake.rename_group("g2", "Renamed")
        await steps.poll()
        assert notices == []
        fake.update_user(uid(1), jobTitle="Still watched")
        await steps.poll()
        assert [(n.users, n.groups) for n in notices] == [({uid(1)}, frozenset())]
