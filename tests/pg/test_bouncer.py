"""PostgreSQL behind a real PgBouncer (``tests/pg/bouncer.py``).

In transaction pooling a server session serves other clients between
transactions: ``check`` refuses it unless ``state.postgresql.transaction_pooler``
says so, and with it the store works (no statement cache, no startup
parameters, its session settings per transaction). Neither a direct
connection nor session pooling is ever taken for a transaction pooler.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.store import StateError
from daemon.store.postgres import PostgresStore
from tests.daemon.harness import Deployment, directory
from tests.pg.bouncer import PgBouncer, installed
from tests.pg.cluster import PgCluster
from tests.pg.test_cli import assert_refused, use_postgresql
from tests.store.data import ok, world

pytestmark = pytest.mark.skipif(not installed(), reason="PgBouncer is not installed (Debian)")

#: What PgBouncer must ignore for provisiond's default start-up (no pooler declared).
STARTUP = ("jit", "idle_in_transaction_session_timeout")


def running(cluster: PgCluster, **options: object) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(cluster, **options)  # type: ignore[arg-type]
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.destroy()


@pytest.fixture(scope="module")
def transaction_bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    """Transaction pooling, refusing every startup parameter it does not know."""
    yield from running(pg_cluster)


@pytest.fixture(scope="module")
def lenient_bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    """Transaction pooling that ignores provisiond's startup parameters."""
    yield from running(pg_cluster, ignore_startup_parameters=STARTUP)


@pytest.fixture(scope="module")
def session_bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    yield from running(pg_cluster, pool_mode="session", ignore_startup_parameters=STARTUP)


@pytest.fixture
def database(pg_cluster: PgCluster) -> Iterator[str]:
    name = urllib.parse.urlsplit(pg_cluster.new_database()).path.lstrip("/")
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    d = Deployment(tmp_path)
    d.write_directory(directory(10))
    d.write_config()
    return d


def through(bouncer: PgBouncer, database: str, **options: object) -> PostgresStore:
    dsn = bouncer.dsn_for(database)
    password = bouncer.cluster.password
    return PostgresStore(dsn, password=password, ssl=False, connect_timeout=5, **options)  # type: ignore[arg-type]


def migrated(cluster: PgCluster, database: str) -> bool:
    found = cluster.psql("SELECT to_regclass('schema_version') IS NOT NULL", database=database)
    return found == "t"


def test_check_refuses_an_undeclared_transaction_pooler(
    deployment: Deployment, pg_cluster: PgCluster, lenient_bouncer: PgBouncer, database: str
) -> None:
    use_postgresql(deployment, pg_cluster, database, port=lenient_bouncer.port)
    assert_refused(
        deployment,
        "check",
        f"PostgreSQL at 127.0.0.1:{lenient_bouncer.port}/{database}",
        "through a transaction pooler",
        "server session",
        "set state.postgresql.transaction_pooler: true, or use session pooling",
    )
    assert not migrated(pg_cluster, database), "refused before the migrations"


def test_check_names_the_setting_when_the_pooler_refuses_the_startup_parameters(
    deployment: Deployment, pg_cluster: PgCluster, transaction_bouncer: PgBouncer, database: str
) -> None:
    use_postgresql(deployment, pg_cluster, database, port=transaction_bouncer.port)
    assert_refused(
        deployment,
        "check",
        f"PostgreSQL at 127.0.0.1:{transaction_bouncer.port}/{database}",
        "unsupported startup parameter",
        "state.postgresql.transaction_pooler: true",
    )


def test_check_passes_a_declared_transaction_pooler(
    deployment: Deployment, pg_cluster: PgCluster, transaction_bouncer: PgBouncer, database: str
) -> None:
    use_postgresql(
        deployment, pg_cluster, database, port=transaction_bouncer.port, transaction_pooler=True
    )
    proc = deployment.cli("check")
    assert "through a transaction pooler" in " ".join(proc.stdout.split()), proc.stdout
    assert migrated(pg_cluster, database)


async def test_the_store_works_through_a_declared_transaction_pooler(
    transaction_bouncer: PgBouncer, database: str
) -> None:
    # Two stores, as two replicas: their transactions share server sessions.
    first = through(transaction_bouncer, database, transaction_pooler=True)
    second = through(transaction_bouncer, database, transaction_pooler=True)
    await first.open()
    await second.open()
    try:
        assert await first._pooler_evidence() is not None, "PgBouncer itself is detected"
        w = world(1, users=50, groups=3)
        await first.commit(*w.commit_args())
        for round_trip in range(3):  # the same statements again, on other server sessions
            store = (first, second)[round_trip % 2]
            due = await store.due("a", 0.0, 1000)
            assert len(due) == (len(w.objects) if round_trip == 0 else 0)
            await store.record("a", [ok(r.key, r.desired_hash, "r") for r in due], 0.0)
            assert (await store.committed()).version == w.version
        lease = await first.acquire_lease("target:a", "first/1", 30.0)
        assert lease is not None and lease.holder == "first/1"
        assert await second.acquire_lease("target:a", "second/1", 30.0) is None
        renewed = await first.acquire_lease("target:a", "first/1", 30.0)
        assert renewed is not None and renewed.term == lease.term
        # The settings a session would get at start-up hold in each transaction.
        async with first._transaction() as db:
            assert await db.fetchval("SHOW idle_in_transaction_session_timeout") == "5s"
            assert await db.fetchval("SHOW jit") == "off"
    finally:
        await first.aclose()
        await second.aclose()


async def test_neither_a_direct_connection_nor_session_pooling_is_a_transaction_pooler(
    pg_cluster: PgCluster, session_bouncer: PgBouncer, database: str
) -> None:
    direct = PostgresStore(pg_cluster.dsn_for(database), ssl=False, connect_timeout=5)
    session = through(session_bouncer, database)
    for store in (direct, session):
        await store.open()  # would refuse what it took for a transaction pooler
        try:
            for _ in range(10):
                assert await store._pooler_evidence() is None
            if store is direct:  # its settings came at start-up, none per transaction
                assert store._begin_suffix == ""
                async with store._transaction() as db:
                    assert await db.fetchval("SHOW idle_in_transaction_session_timeout") == "5s"
        finally:
            await store.aclose()


async def test_a_pool_of_one_connection_skips_the_detection(
    lenient_bouncer: PgBouncer, database: str
) -> None:
    store = through(lenient_bouncer, database, pool_size=1)
    await store.open()
    try:
        assert await store._pooler_evidence() is None
    finally:
        await store.aclose()
    with pytest.raises(StateError, match="through a transaction pooler"):
        await through(lenient_bouncer, database, pool_size=2).open()  # two are enough
