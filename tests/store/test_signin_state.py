"""The sign-in state every replica shares: meta set once, claims, parked values, failures,
sessions and the purge, on every backend, also with two stores and two processes racing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from daemon.store import ParkedValue, SessionRecord, StateError, Store, StoreFull
from tests.store.backends import StoreFactory
from tests.store.signin_race import NOW, race

ROOT = Path(__file__).resolve().parents[2]


def session(
    sid: str,
    user: str = "u1",
    *,
    index: str | None = None,
    seen: float = 100.0,
    until: float = 500.0,
) -> SessionRecord:
    return SessionRecord(sid, index or f"idx-{sid}", user, f'{{"sid": "{sid}"}}', seen, until)


class TestInitMeta:
    async def test_the_first_value_stays(self, store_factory: StoreFactory) -> None:
        store = await store_factory.open()
        assert await store.init_meta("portal_key", "first") == "first"
        assert await store.init_meta("portal_key", "second") == "first"
        assert await store.get_meta("portal_key") == "first"
        await store.aclose()
        again = await store_factory.open()
        assert await again.init_meta("portal_key", "third") == "first"

    async def test_two_stores_racing_agree(self, store_factory: StoreFactory) -> None:
        one, two = await store_factory.open(), await store_factory.open()
        got: list[str] = []

        async def init(store: Store, value: str) -> None:
            got.append(await store.init_meta("race", value))

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(init, one if i % 2 else two, f"value-{i}")
        assert len(got) == 10 and len(set(got)) == 1
        assert await one.get_meta("race") == got[0]


class TestClaim:
    async def test_once_until_it_expires(self, store: Store) -> None:
        assert await store.claim("k", 200.0, 100.0, 10) is True
        assert await store.claim("k", 300.0, 150.0, 10) is False
        assert await store.claim("other", 200.0, 150.0, 10) is True
        # Expired: the key may be claimed again, and that claim holds in turn.
        assert await store.claim("k", 400.0, 200.0, 10) is True
        assert await store.claim("k", 500.0, 399.0, 10) is False

    async def test_full_of_unexpired_claims_refuses_new_ones(self, store: Store) -> None:
        for i in range(3):
            assert await store.claim(f"k{i}", 200.0 + i, 100.0, 3)
        with pytest.raises(StoreFull):
            await store.claim("new", 300.0, 100.0, 3)
        # A key already held is still "seen", not "full".
        assert await store.claim("k0", 300.0, 100.0, 3) is False
        # Expired claims make room; the refused key was not recorded.
        assert await store.claim("new", 300.0, 200.5, 3) is True
        assert await store.claim("new", 300.0, 200.5, 3) is False

    async def test_two_stores_racing_claim_each_key_once(self, store_factory: StoreFactory) -> None:
        one, two = await store_factory.open(), await store_factory.open()
        wins: list[tuple[int, str]] = []

        async def claimer(store: Store, name: str) -> None:
            for i in range(40):
                if await store.claim(f"race-{i}", 200.0, 100.0, 1000):
                    wins.append((i, name))

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(claimer, one, f"one-{n}")
                tg.start_soon(claimer, two, f"two-{n}")
        assert sorted(i for i, _ in wins) == list(range(40))


class TestParked:
    async def test_single_use(self, store: Store) -> None:
        await store.park("h1", '{"id": "r1"}', 90.0, 200.0, 100.0, 10)
        assert await store.take_parked("h1", 150.0) == ParkedValue('{"id": "r1"}', 90.0, 200.0)
        assert await store.take_parked("h1", 150.0) is None
        assert await store.take_parked("unknown", 150.0) is None

    async def test_expired_values_are_not_given_out(self, store: Store) -> None:
        await store.park("h1", "v", 100.0, 200.0, 100.0, 10)
        assert await store.take_parked("h1", 200.0) is None
        assert await store.take_parked("h1", 150.0) is None  # and it is gone

    async def test_bounded(self, store: Store) -> None:
        for i in range(2):
            await store.park(f"h{i}", "v", 100.0, 200.0 + i, 100.0, 2)
        with pytest.raises(StoreFull):
            await store.park("h2", "v", 100.0, 300.0, 150.0, 2)
        assert await store.take_parked("h2", 150.0) is None
        await store.park("h2", "v", 200.0, 300.0, 200.5, 2)  # h0 expired and made room
        assert await store.take_parked("h2", 250.0) is not None

    async def test_two_stores_racing_take_each_value_once(
        self, store_factory: StoreFactory
    ) -> None:
        one, two = await store_factory.open(), await store_factory.open()
        for i in range(40):
            await one.park(f"race-{i}", f"value-{i}", 100.0, 200.0, 100.0, 1000)
        taken: list[str] = []

        async def taker(store: Store) -> None:
            for i in range(40):
                got = await store.take_parked(f"race-{i}", 150.0)
                if got is not None:
                    taken.append(got.value)

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(taker, one if n % 2 else two)
                tg.start_soon(taker, two if n % 2 else one)
        assert sorted(taken) == sorted(f"value-{i}" for i in range(40))


class TestFailures:
    async def test_counted_within_the_window(self, store: Store) -> None:
        await store.add_failures(["user:a", "address:1"], 100.0, 160.0)
        await store.add_failures(["user:a", "address:1"], 110.0, 170.0)
        await store.add_failures(["user:b", "address:1"], 120.0, 180.0)
        assert await store.count_failures("user:a", 50.0) == 2
        assert await store.count_failures("user:a", 100.0) == 1  # after 100: only the second
        assert await store.count_failures("address:1", 50.0) == 3
        assert await store.count_failures("user:none", 0.0) == 0
        await store.clear_failures("user:a")
        assert await store.count_failures("user:a", 0.0) == 0
        assert await store.count_failures("address:1", 50.0) == 3

    async def test_two_stores_add_up(self, store_factory: StoreFactory) -> None:
        one, two = await store_factory.open(), await store_factory.open()

        async def fail(store: Store) -> None:
            for _ in range(20):
                await store.add_failures(["shared"], 100.0, 200.0)

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(fail, one if n % 2 else two)
        assert await one.count_failures("shared", 0.0) == 80
        assert await two.count_failures("shared", 0.0) == 80

    async def test_a_keys_expired_failures_go_when_it_fails_again(
        self, store_factory: StoreFactory, store: Store
    ) -> None:
        await store.add_failures(["k", "other"], 100.0, 160.0)
        await store.add_failures(["k"], 170.0, 230.0)
        assert await store.count_failures("k", 0.0) == 1
        # Not yet purged for a key that did not fail again.
        assert await store.count_failures("other", 0.0) == 1
        assert await store.purge(170.0) == 1
        assert await store.count_failures("other", 0.0) == 0


class TestSessions:
    async def test_put_get_touch_delete(self, store_factory: StoreFactory, store: Store) -> None:
        record = session("s1")
        await store.put_session(record, 100.0, 10)
        assert await store.get_session("s1") == record
        assert await store.get_session("s2") is None
        assert await store.touch_session("s1", 150.0, 550.0) is True
        touched = await store.get_session("s1")
        assert touched is not None
        assert (touched.last_seen, touched.expires_at, touched.data) == (150.0, 550.0, record.data)
        await store.delete_session("s1")
        await store.delete_session("s1")  # unknown: no error
        assert await store.get_session("s1") is None
        # A touch after the delete does not bring it back.
        assert await store.touch_session("s1", 160.0, 560.0) is False
        assert await store.get_session("s1") is None
        # Sessions survive a reopen (a restart keeps users signed in).
        await store.put_session(session("s3"), 100.0, 10)
        await store.aclose()
        assert await (await store_factory.open()).get_session("s3") == session("s3")

    async def test_put_replaces(self, store: Store) -> None:
        await store.put_session(session("s1", seen=100.0), 100.0, 10)
        await store.put_session(session("s1", index="new", seen=120.0), 120.0, 10)
        assert await store.get_session("s1") == session("s1", index="new", seen=120.0)

    async def test_revoked_by_index_and_by_user(self, store: Store) -> None:
        await store.put_session(session("a1", "alice", index="shared"), 100.0, 10)
        await store.put_session(session("a2", "alice"), 100.0, 10)
        await store.put_session(session("b1", "bob"), 100.0, 10)
        assert await store.delete_sessions_by_index("shared") == 1
        assert await store.delete_sessions_by_index("shared") == 0
        assert await store.get_session("a1") is None
        assert await store.delete_user_sessions("alice") == 1
        assert await store.get_session("a2") is None
        assert await store.get_session("b1") is not None

    async def test_a_user_keeps_only_the_most_recently_seen(self, store: Store) -> None:
        for i in range(5):
            await store.put_session(session(f"s{i}", seen=100.0 + i), 100.0 + i, 3)
        await store.put_session(session("other", "bob"), 110.0, 3)
        kept = [i for i in range(5) if await store.get_session(f"s{i}") is not None]
        assert kept == [2, 3, 4]
        assert await store.get_session("other") is not None

    async def test_expired_sessions_go_when_one_is_put(self, store: Store) -> None:
        await store.put_session(session("old", "bob", until=150.0), 100.0, 10)
        await store.put_session(session("live", "bob", until=500.0), 100.0, 10)
        await store.put_session(session("new"), 150.0, 10)
        assert await store.get_session("old") is None
        assert await store.get_session("live") is not None


class TestPurge:
    async def test_deletes_what_expired_everywhere(self, store: Store) -> None:
        await store.put_session(session("gone", until=150.0), 100.0, 10)
        await store.put_session(session("kept", until=250.0), 100.0, 10)
        await store.claim("gone", 150.0, 100.0, 10)
        await store.claim("kept", 250.0, 100.0, 10)
        await store.park("gone", "v", 100.0, 150.0, 100.0, 10)
        await store.park("kept", "v", 100.0, 250.0, 100.0, 10)
        await store.add_failures(["gone"], 100.0, 150.0)
        await store.add_failures(["kept"], 100.0, 250.0)
        assert await store.purge(150.0) == 4
        assert await store.purge(150.0) == 0
        assert await store.get_session("gone") is None
        assert await store.get_session("kept") is not None
        assert await store.count_failures("gone", 0.0) == 0
        assert await store.count_failures("kept", 0.0) == 1
        assert await store.claim("kept", 300.0, 200.0, 10) is False
        assert await store.take_parked("kept", 200.0) is not None


class TestTwoProcesses:
    async def test_a_child_process_races_claims_takes_and_failures(
        self, store_factory: StoreFactory, tmp_path: Path
    ) -> None:
        n = 150
        store = await store_factory.open()
        for i in range(n):
            await store.park(f"handle-{i}", str(i), NOW, NOW + 60, NOW, 10_000)
        argv = [sys.executable, "-m", "tests.store.signin_race", json.dumps(store_factory.spec())]
        with (tmp_path / "child.err").open("w+b") as err:
            async with await anyio.open_process([*argv, str(n)], cwd=ROOT, stderr=err) as child:
                assert child.stdin is not None and child.stdout is not None
                with anyio.fail_after(60):
                    buffer = b""
                    while b"open\n" not in buffer:
                        buffer += await child.stdout.receive()
                    await child.stdin.send(b"go\n")
                    mine = await race(store, n)
                    while not buffer.endswith(b"}\n"):
                        buffer += await child.stdout.receive()
                    await child.wait()
            err.seek(0)
            assert child.returncode == 0, err.read().decode()
        theirs = json.loads(buffer.decode().split("open\n", 1)[1])
        # Each claim and each handle went to exactly one of the two processes.
        assert sorted(mine["claimed"] + theirs["claimed"]) == list(range(n))
        assert sorted(mine["taken"] + theirs["taken"]) == list(range(n))
        # Both raced for real: each won some of each.
        assert mine["claimed"] and theirs["claimed"], (mine, theirs)
        assert await store.count_failures("shared", 0.0) == 2 * n


async def test_a_closed_store_raises_state_error(store: Store) -> None:
    await store.aclose()
    with pytest.raises(StateError):
        await store.get_session("s")
    with pytest.raises(StateError):
        await store.count_failures("k", 0.0)
    with pytest.raises(StateError):
        await store.claim("k", 2.0, 1.0, 10)
