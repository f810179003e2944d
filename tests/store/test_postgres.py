"""What only the PostgreSQL backend promises: its pool, its connections, its migrations.

The contract suite (the other files here) runs on PostgreSQL too; these
tests are about the server being a separate process that can refuse,
stop, drop connections or change its password.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from daemon.secrets import SecretStore
from daemon.store import StateError, StoreUnavailable
from daemon.store import postgres as pg_store
from daemon.store.postgres import MIGRATIONS, PostgresStore, dsn_location, dsn_passwords
from tests.pg.cluster import PgCluster, free_port
from tests.store.data import ok, plan, upsert, user, want, world


@pytest.fixture
def dsn(pg_cluster: PgCluster) -> Iterator[str]:
    made = pg_cluster.new_database()
    yield made
    pg_cluster.drop_database(database_of(made))


def database_of(dsn: str) -> str:
    return urllib.parse.urlsplit(dsn).path.lstrip("/")


def store_on(dsn: str, **options: object) -> PostgresStore:
    return PostgresStore(dsn, ssl=False, connect_timeout=5, **options)  # type: ignore[arg-type]


def test_where_a_dsn_points_and_its_password() -> None:
    assert dsn_location("postgresql://u:pw@db.example.com/state") == "db.example.com:5432/state"
    assert dsn_location("postgresql://u@10.0.0.1:6432/x") == "10.0.0.1:6432/x"
    assert dsn_location("postgresql://u@a:1,b/x") == "a:1,b:5432/x"
    assert dsn_location("postgresql://u@[::1]:7/x") == "[::1]:7/x"
    assert dsn_location("postgresql://alice@h") == "h:5432/alice"
    assert dsn_location("postgresql:///d?host=/run/postgresql") == "/run/postgresql:5432/d"
    assert dsn_passwords("postgresql://u:p%40ss-word-1@h/d") == ["p%40ss-word-1", "p@ss-word-1"]
    assert dsn_passwords("postgresql://u@h/d?password=query-secret") == ["query-secret"]
    assert dsn_passwords("postgresql://u@h/d") == []


async def test_an_unreachable_server_is_a_state_error_naming_it(pg_cluster: PgCluster) -> None:
    port = free_port()
    store = store_on(f"postgresql://provisiond:{pg_cluster.password}@127.0.0.1:{port}/state")
    with pytest.raises(StateError) as refused:
        await store.open()
    message = str(refused.value)
    assert message == f"cannot use PostgreSQL at 127.0.0.1:{port}/state: connection refused"
    with pytest.raises(StateError, match="not open"):
        await store.committed()
    await store.aclose()


async def test_a_lost_server_is_store_unavailable_and_the_store_recovers(
    pg_cluster: PgCluster, dsn: str
) -> None:
    store = store_on(dsn)
    await store.open()
    try:
        await store.set_meta("marker", "kept")
        pg_cluster.stop()
        try:
            with pytest.raises(StoreUnavailable) as lost:
                await store.get_meta("marker")
            assert f"PostgreSQL at 127.0.0.1:{pg_cluster.port}/{database_of(dsn)}" in str(
                lost.value
            )
            assert pg_cluster.password not in str(lost.value)
        finally:
            pg_cluster.start()
        assert await store.get_meta("marker") == "kept"
        await store.set_meta("marker", "again")
        assert await store.get_meta("marker") == "again"
    finally:
        await store.aclose()


async def test_terminated_connections_are_replaced(pg_cluster: PgCluster, dsn: str) -> None:
    store = store_on(dsn, application_name="terminated-test")
    await store.open()
    try:
        await store.commit(*world(1).commit_args())
        assert pg_cluster.terminate(application_name="terminated-test") >= 1
        await anyio.sleep(0.2)
        for _ in range(2):  # the first call may still meet the dead connection
            try:
                committed = await store.committed()
                break
            except StoreUnavailable:
                continue
        assert committed == world(1).committed
    finally:
        await store.aclose()


async def test_a_connection_ended_while_idle_fails_the_next_call_once(
    pg_cluster: PgCluster, dsn: str
) -> None:
    # A lease holder must hear that the server ended its session, even between
    # calls: asyncpg alone would hand the next call a new connection silently.
    store = store_on(dsn, application_name="idle-ended-test")
    await store.open()
    try:
        await store.set_meta("marker", "kept")
        assert pg_cluster.terminate(application_name="idle-ended-test") >= 1
        await anyio.sleep(0.5)  # the client sees the socket close
        with pytest.raises(StoreUnavailable, match="the server closed a connection") as lost:
            await store.get_meta("marker")
        assert f"PostgreSQL at 127.0.0.1:{pg_cluster.port}/{database_of(dsn)}" in str(lost.value)
        assert await store.get_meta("marker") == "kept"
        assert await store.get_meta("marker") == "kept"
        # Connections the pool closes itself (here: expired ones) are no news.
        await store.pool.expire_connections()
        for _ in range(3):
            assert await store.get_meta("marker") == "kept"
            await anyio.sleep(0.2)
    finally:
        await store.aclose()


async def test_the_pool_holds_at_most_pool_size_connections(
    pg_cluster: PgCluster, dsn: str
) -> None:
    store = store_on(dsn, pool_size=3, application_name="pool-test")
    await store.open()
    try:
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(store.set_meta, f"k{i}", "v")
                tg.start_soon(store.committed)
        opened = pg_cluster.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool-test'"
        )
        assert 1 <= int(opened) <= 3
    finally:
        await store.aclose()
    closed = pg_cluster.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool-test'"
    )
    assert closed == "0"


async def test_each_new_connection_asks_for_the_password_again(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    # A role of its own: changing its password must not disturb other tests.
    first, second = "rotating-secret-one", "rotating-secret-two"
    pg_cluster.psql(f"CREATE ROLE rotator LOGIN PASSWORD '{first}'")
    pg_cluster.psql("CREATE DATABASE rotation OWNER rotator")
    secret = tmp_path / "pg.password"
    secret.write_text(first)
    secrets = SecretStore()
    store = store_on(
        f"postgresql://rotator@127.0.0.1:{pg_cluster.port}/rotation",
        password=secrets.file(secret).value,
        application_name="rotation-test",
    )
    try:
        await store.open()
        await store.set_meta("marker", "kept")
        pg_cluster.psql(f"ALTER ROLE rotator PASSWORD '{second}'")
        secret.write_text(second + "\n")
        assert pg_cluster.terminate(application_name="rotation-test") >= 1
        await anyio.sleep(0.2)
        for _ in range(2):
            try:
                assert await store.get_meta("marker") == "kept"
                break
            except StoreUnavailable:
                continue
        else:
            pytest.fail("the store did not reconnect with the new password")
    finally:
        await store.aclose()
        pg_cluster.drop_database("rotation")
        pg_cluster.psql("DROP ROLE rotator")


async def test_a_failing_migration_changes_nothing(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_on(dsn)
    await store.open()
    await store.set_meta("marker", "kept")
    await store.aclose()
    broken = (
        "CREATE TABLE half_done (x text); INSERT INTO meta VALUES ('x', 'y'); "
        "SELECT nope FROM nowhere"
    )
    monkeypatch.setattr(pg_store, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StateError, match=f"{database_of(dsn)}: .*nowhere"):
        await store_on(dsn).open()
    db = await asyncpg.connect(dsn, ssl=False)
    try:
        assert await db.fetchval("SELECT max(version) FROM schema_version") == len(MIGRATIONS)
        assert await db.fetchval("SELECT to_regclass('half_done')") is None
        assert await db.fetchval("SELECT value FROM meta WHERE key = 'x'") is None
    finally:
        await db.close()
    monkeypatch.setattr(pg_store, "MIGRATIONS", MIGRATIONS)
    again = store_on(dsn)
    await again.open()
    assert await again.get_meta("marker") == "kept"
    await again.aclose()


async def test_migrations_are_recorded_one_row_per_version(dsn: str) -> None:
    store = store_on(dsn)
    await store.open()
    await store.aclose()
    db = await asyncpg.connect(dsn, ssl=False)
    try:
        rows = await db.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        # Sign-in names and keys compare bytewise, as in SQLite.
        collation = await db.fetchval(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_name = 'target_objects' AND column_name = 'object_id'"
        )
        assert collation == "C"
    finally:
        await db.close()


async def test_delivery_order_is_bytewise_whatever_the_database_collation(
    pg_cluster: PgCluster,
) -> None:
    # An ICU English database sorts "a A b B"; SQLite, and so the store, "A B _x a b".
    pg_cluster.psql(
        "CREATE DATABASE collated OWNER provisiond TEMPLATE template0 "
        "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    )
    store = store_on(pg_cluster.dsn_for("collated"))
    try:
        await store.open()
        people = [user(uid) for uid in ("b", "B", "a", "A", "_x", "\u00e9")]
        await store.commit("v1", [upsert(p) for p in people], [], {"app": plan(*map(want, people))})
        due = await store.due("app", 0.0, 100)
        assert [r.key[1] for r in due] == ["A", "B", "_x", "a", "b", "\u00e9"]
        problems = await store.find_user("B")
        assert problems is not None and problems.id == "B"
    finally:
        await store.aclose()
        pg_cluster.drop_database("collated")


async def test_bulk_writes_and_reads_in_batches_lose_nothing(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 7 rows: every bulk statement and streamed read crosses batch boundaries.
    monkeypatch.setattr(pg_store, "_BATCH", 7)
    store = store_on(dsn)
    await store.open()
    try:
        for n in (1, 2, 3):
            w = world(n, users=60, groups=4)
            await store.commit(*w.commit_args())
            assert await store.committed() == w.committed
            assert await store.target_index("a") == w.index()
            assert await store.records(list(w.objects)) == w.objects
            dirty = await store.rows("a", None)
            assert {k: r.desired for k, r in dirty.items()} == w.objects
            assert (await store.rows("a", list(w.objects))).keys() == w.objects.keys()
        released = list(w.objects)[:20]
        await store.commit(w.version, [], [], {"a": plan(released=released)})
        assert (await store.target_index("a")).hashes.keys() == w.objects.keys() - set(released)
    finally:
        await store.aclose()


async def test_statistics_follow_a_first_sync_and_its_delivery(
    pg_cluster: PgCluster, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without this the planner takes a freshly filled table for an empty one,
    # and after the delivery still thinks every row dirty (see _wrote).
    monkeypatch.setattr(pg_store, "_ANALYZE_AFTER", 50)
    database = database_of(dsn)

    def stats() -> tuple[str, str]:
        tuples = pg_cluster.psql(
            "SELECT reltuples::bigint FROM pg_class WHERE relname = 'target_objects'",
            database=database,
        )
        dirty = pg_cluster.psql(
            "SELECT most_common_vals::text FROM pg_stats "
            "WHERE tablename = 'target_objects' AND attname = 'dirty'",
            database=database,
        )
        return tuples, dirty

    store = store_on(dsn)
    await store.open()
    try:
        assert stats() == ("-1", "")  # never analyzed
        w = world(1, users=300, groups=3)
        await store.commit(*w.commit_args())
        # Two targets; the removals of never-written objects are forgotten at once.
        assert stats() == (str(2 * len(w.objects)), "{t}")
        for target in ("a", "b"):
            due = await store.due(target, 0.0, 10_000)
            await store.record(target, [ok(r.key, r.desired_hash, "r") for r in due], 0.0)
        assert stats() == (str(2 * len(w.objects)), "{f}")
    finally:
        await store.aclose()


# -- leases: what the row lock of a fenced write means on a server -------------------------


async def test_a_takeover_waits_for_a_fenced_write_in_flight(dsn: str) -> None:
    """The write checked its fence and locked the lease row: an acquire by another
    replica waits until it committed, so the write lands before the new term."""
    old, new = store_on(dsn), store_on(dsn)
    await old.open()
    await new.open()
    try:
        lease = await old.acquire_lease("target:app", "old/1", 0.5)
        assert lease is not None
        started = time.monotonic()
        taken_after: list[float] = []

        async def write_slowly() -> None:
            async with old._transaction() as db:
                await old._check_fence(db, lease.fence)
                await db.execute("INSERT INTO meta (key, value) VALUES ('marker', 'old')")
                await anyio.sleep(1.5)  # past the lease, still inside the transaction

        async def take_over() -> None:
            await anyio.sleep(0.8)  # the lease has expired by now
            taken = await new.acquire_lease("target:app", "new/1", 30.0)
            assert taken is not None and taken.term == 2
            taken_after.append(time.monotonic() - started)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write_slowly)
            tg.start_soon(take_over)
        # The takeover waited for the write's commit (1.5 s in), and the write landed.
        assert taken_after[0] >= 1.5
        assert await new.get_meta("marker") == "old"
    finally:
        await old.aclose()
        await new.aclose()


async def test_a_stalled_transaction_on_the_lease_row_is_ended_by_the_server(dsn: str) -> None:
    """A replica paused inside a fenced write would hold the lease row forever; the
    server ends its session after the idle-in-transaction timeout instead."""
    stalled, other = store_on(dsn), store_on(dsn)
    await stalled.open()
    await other.open()
    try:
        lease = await stalled.acquire_lease("target:app", "stalled/1", 0.5)
        assert lease is not None
        locked = anyio.Event()

        async def stall() -> None:
            with pytest.raises(StoreUnavailable):
                async with stalled._transaction() as db:
                    await stalled._check_fence(db, lease.fence)
                    locked.set()
                    await anyio.sleep(30)  # no statement: idle in the transaction
                    await db.execute("SELECT 1")

        timeout = int(pg_store.IDLE_IN_TRANSACTION_MS) / 1000
        async with anyio.create_task_group() as tg:
            tg.start_soon(stall)
            await locked.wait()
            started = time.monotonic()
            await anyio.sleep(0.6)  # the lease has expired
            with anyio.fail_after(timeout + 5):
                taken = await other.acquire_lease("target:app", "other/1", 30.0)
            waited = time.monotonic() - started
            await anyio.sleep(0.5)  # the stalled one's client has seen its session end
            tg.cancel_scope.cancel()
        assert taken is not None and taken.term == 2
        assert timeout - 1 < waited < timeout + 5
    finally:
        await stalled.aclose()
        await other.aclose()


@pytest.mark.parametrize("same_keys", [True, False])
async def test_a_whole_hold_approval_waits_for_a_cycle_commit_in_flight(
    dsn: str, same_keys: bool
) -> None:
    """A cycle's commit has written the hold and not committed yet; an approval of the
    keys the operator saw, from another connection, waits for it. Then it approves the
    hold only if the commit left the same keys (the approval survives), and nothing if
    the commit wrote other keys (nobody saw them)."""
    cycle, operator = store_on(dsn), store_on(dsn)
    await cycle.open()
    await operator.open()
    try:
        seen = frozenset({("user", "a"), ("user", "b")})
        await cycle.commit("v1", [], [], {"app": plan(hold=seen)})
        written = seen if same_keys else seen | {("user", "c")}
        approved_after: list[tuple[float, int]] = []
        started = time.monotonic()

        async def commit_slowly() -> None:
            async with cycle._transaction() as db:
                await cycle._write_plan(db, "app", plan(hold=written), time.time())
                await anyio.sleep(1.0)  # the hold's row stays locked until the commit

        async def approve() -> None:
            await anyio.sleep(0.3)
            n = await operator.approve("app", seen)
            approved_after.append((time.monotonic() - started, n))

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit_slowly)
            tg.start_soon(approve)
        [(after, n)] = approved_after
        assert after >= 1.0  # it waited for the commit
        hold = await operator.hold("app")
        assert hold is not None and hold.keys == written
        assert (n, hold.approved) == ((2, True) if same_keys else (0, False))
    finally:
        await cycle.aclose()
        await operator.aclose()
