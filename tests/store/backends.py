"""How the contract suite makes, reopens and inspects a store, one factory per backend.

To run the suite on a new backend, subclass :class:`StoreFactory` and add it
to :data:`FACTORIES`. Everything backend-specific the suite needs is here:
opening the same database again (also from another process, through
:meth:`StoreFactory.spec`), building a database at an older schema version,
writing data into it with raw statements, and reading or forcing the
recorded schema version.
"""

from __future__ import annotations

import abc
import json
import sqlite3
import urllib.parse
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import anyio
import asyncpg
import pytest

from daemon.model import User, content_hash, encode
from daemon.store import Store, phase
from daemon.store import postgres as pg_store
from daemon.store.postgres import PostgresStore
from daemon.store.sqlite import MIGRATIONS, SqliteStore
from tests.pg.cluster import PgCluster
from tests.store.data import Seed


class StoreFactory(abc.ABC):
    """One test's database on one backend.

    Every :meth:`open` gives a new, opened :class:`Store` object on the same
    database: call it again after closing to reopen, or while another is open
    for a second connection. :meth:`aclose` closes whatever was opened.
    """

    name: ClassVar[str]
    #: What the backend raises for a value it cannot store (an unencodable record).
    errors: ClassVar[tuple[type[Exception], ...]]

    def __init__(self) -> None:
        self._opened: list[Store] = []

    @classmethod
    def setup(cls, request: pytest.FixtureRequest) -> None:
        """Called by the fixture before :meth:`create`: take the fixtures the backend needs."""
        del request  # SQLite needs none

    @classmethod
    async def dispose(cls) -> None:
        """Called after each test, once its stores are closed: drop what the test created."""
        return None  # a file in the test's temporary directory goes with it

    @classmethod
    @abc.abstractmethod
    async def create(cls, workdir: Path, name: str) -> StoreFactory:
        """A factory on a new, empty database (``name`` tells databases of one test apart)."""

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: dict[str, str]) -> StoreFactory:
        """The factory :meth:`spec` describes, rebuilt in another process."""

    @abc.abstractmethod
    def spec(self) -> dict[str, str]:
        """A JSON-able description of this database, for a child process."""

    @abc.abstractmethod
    def new(self) -> Store:
        """A store object on this database, not opened yet."""

    @abc.abstractmethod
    async def another(self, name: str) -> StoreFactory:
        """A factory on a second, new database of the same backend."""

    async def open(self) -> Store:
        store = self.new()
        await store.open()
        self._opened.append(store)
        return store

    async def aclose(self) -> None:
        for store in self._opened:
            await store.aclose()
        self._opened.clear()

    # -- schema --------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def latest_version(self) -> int:
        """The schema version this code migrates to (the number of migrations)."""

    @abc.abstractmethod
    async def create_at(self, version: int) -> None:
        """Make this (new) database with only the first ``version`` migrations applied."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def set_schema_version(self, version: int) -> None:
        """Record ``version`` as the database's schema version, changing nothing else."""

    @abc.abstractmethod
    async def integrity_problems(self) -> list[str]:
        """What the backend's own consistency check finds wrong with the database (``[]``: none)."""

    @abc.abstractmethod
    async def seed(self, seed: Seed) -> None:
        """Write ``seed`` with raw statements valid at the database's current schema version.

        This is the data an older provisiond left behind; the migration tests
        then open the database with today's code and read it back.
        """


class SqliteFactory(StoreFactory):
    name = "sqlite"
    errors = (TypeError, sqlite3.Error)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    @classmethod
    async def create(cls, workdir: Path, name: str) -> SqliteFactory:
        return cls(workdir / f"{name}.db")

    @classmethod
    def from_spec(cls, spec: dict[str, str]) -> SqliteFactory:
        return cls(Path(spec["path"]))

    def spec(self) -> dict[str, str]:
        return {"backend": self.name, "path": str(self.path)}

    def new(self) -> SqliteStore:
        return SqliteStore(self.path)

    async def another(self, name: str) -> SqliteFactory:
        return await self.create(self.path.parent, name)

    @property
    def latest_version(self) -> int:
        return len(MIGRATIONS)

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, isolation_level=None))

    async def create_at(self, version: int) -> None:
        with self._connect() as db:
            db.execute("BEGIN")
            for script in MIGRATIONS[:version]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={version}")
            db.execute("COMMIT")

    async def schema_version(self) -> int:
        with self._connect() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    async def set_schema_version(self, version: int) -> None:
        with self._connect() as db:
            db.execute(f"PRAGMA user_version={version}")

    async def integrity_problems(self) -> list[str]:
        with self._connect() as db:
            found = [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found

    async def seed(self, seed: Seed) -> None:
        with self._connect() as db:
            columns = {t: {row[1] for row in db.execute(f"PRAGMA table_info({t})")} for t in SEEDED}

            def insert(table: str, row: dict[str, Any]) -> None:
                row = {k: v for k, v in row.items() if k in columns[table]}
                names = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))

            db.execute("BEGIN")
            seed_rows(seed, insert, int)
            db.execute("COMMIT")


#: The tables :func:`seed_rows` writes.
SEEDED = ("meta", "directory_objects", "target_objects", "holds")


def seed_rows(
    seed: Seed, insert: Callable[[str, dict[str, Any]], None], boolean: Callable[[bool], Any]
) -> None:
    """Pass every row of ``seed`` to ``insert(table, row)``, as an older provisiond wrote it.

    ``insert`` keeps only the columns its schema version has: an older
    provisiond could not have written the others. ``boolean`` stores a flag
    (SQLite: 0 or 1; PostgreSQL: a boolean).
    """
    insert("meta", {"key": "snapshot_version", "value": seed.version})
    insert("meta", {"key": "snapshot_committed_at", "value": repr(seed.committed_at)})
    for k, v in seed.meta.items():
        insert("meta", {"key": k, "value": v})
    for obj in seed.objects:
        is_user = isinstance(obj, User)
        insert(
            "directory_objects",
            {
                "kind": "user" if is_user else "group",
                "object_id": obj.id,
                "hash": content_hash(obj),
                "data": encode(obj).decode(),
                "login_username": obj.username.casefold() if is_user else None,
                "login_email": obj.email.casefold() if is_user else None,
            },
        )
    for r in seed.rows:
        insert(
            "target_objects",
            {
                "target": r.target,
                "kind": r.key[0],
                "object_id": r.key[1],
                "remote_id": r.remote_id,
                "desired_hash": r.desired_hash,
                "desired": None if r.desired is None else encode(r.desired).decode(),
                "active": None if r.active is None else boolean(r.active),
                "written_hash": r.written_hash,
                "written": None if r.written is None else encode(r.written).decode(),
                "dirty": boolean(r.dirty),
                "phase": phase(r.key[0], r.desired is None),
                "attempts": r.attempts,
                "last_error": r.last_error,
                "next_attempt_at": r.next_attempt_at,
                "updated_at": seed.committed_at,
            },
        )
    for h in seed.holds:
        insert(
            "holds",
            {
                "target": h.target,
                "keys": json.dumps(sorted([list(k) for k in h.keys])),
                "created_at": h.created_at,
                "approved": boolean(h.approved),
            },
        )


class PostgresFactory(StoreFactory):
    """A new database per test (and per :meth:`another`) on the session's private cluster.

    The databases a test made are dropped after it. Raw statements go
    through a connection of their own, as the superuser may not be needed:
    the role that owns the database does everything here.
    """

    name = "postgresql"
    errors = (TypeError, asyncpg.DataError, asyncpg.PostgresError)
    cluster: ClassVar[PgCluster | None] = None
    _made: ClassVar[list[str]] = []

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn

    @classmethod
    def setup(cls, request: pytest.FixtureRequest) -> None:
        cluster = request.getfixturevalue("pg_cluster")
        assert isinstance(cluster, PgCluster)
        cls.cluster = cluster

    @classmethod
    async def dispose(cls) -> None:
        if cls.cluster is None:
            return
        made, cls._made[:] = list(cls._made), []
        for database in made:
            await anyio.to_thread.run_sync(cls.cluster.drop_database, database)

    @classmethod
    async def create(cls, workdir: Path, name: str) -> PostgresFactory:
        assert cls.cluster is not None, "PostgresFactory.setup was not called"
        dsn = await anyio.to_thread.run_sync(cls.cluster.new_database)
        cls._made.append(urllib.parse.urlsplit(dsn).path.lstrip("/"))
        return cls(dsn)

    @classmethod
    def from_spec(cls, spec: dict[str, str]) -> PostgresFactory:
        return cls(spec["dsn"])

    def spec(self) -> dict[str, str]:
        return {"backend": self.name, "dsn": self.dsn}

    def new(self) -> PostgresStore:
        return PostgresStore(self.dsn, ssl=False, pool_size=4, connect_timeout=10)

    async def another(self, name: str) -> PostgresFactory:
        return await self.create(Path(), name)

    @property
    def latest_version(self) -> int:
        return len(pg_store.MIGRATIONS)

    async def execute(self, *statements: str) -> None:
        """Run raw statements in one transaction, on a connection of their own."""
        db = await asyncpg.connect(self.dsn, ssl=False)
        try:
            async with db.transaction():
                for statement in statements:
                    await db.execute(statement)
        finally:
            await db.close()

    async def fetchval(self, query: str) -> Any:
        db = await asyncpg.connect(self.dsn, ssl=False)
        try:
            return await db.fetchval(query)
        finally:
            await db.close()

    async def create_at(self, version: int) -> None:
        await self.execute(
            pg_store.SCHEMA_VERSION_TABLE,
            *pg_store.MIGRATIONS[:version],
            *(f"INSERT INTO schema_version (version) VALUES ({v})" for v in range(1, version + 1)),
        )

    async def schema_version(self) -> int:
        return int(await self.fetchval("SELECT max(version) FROM schema_version"))

    async def set_schema_version(self, version: int) -> None:
        await self.execute(
            f"DELETE FROM schema_version WHERE version > {version}",
            f"INSERT INTO schema_version (version) VALUES ({version}) ON CONFLICT DO NOTHING",
        )

    async def integrity_problems(self) -> list[str]:
        """What ``pg_amcheck`` (heap and B-tree checks) reports; needs the superuser."""
        assert self.cluster is not None
        database = urllib.parse.urlsplit(self.dsn).path.lstrip("/")
        argv = [
            str(self.cluster.bindir / "pg_amcheck"),
            "--install-missing", "--heapallindexed", "--no-password",
            "-h", self.cluster.host, "-p", str(self.cluster.port), "-U", "postgres",
            "-d", database,
        ]  # fmt: skip
        done = await anyio.run_process(argv, check=False)
        found = (done.stdout + done.stderr).decode(errors="replace").strip()
        return [] if done.returncode == 0 else (found.splitlines() or [f"exit {done.returncode}"])

    async def seed(self, seed: Seed) -> None:
        db = await asyncpg.connect(self.dsn, ssl=False)
        try:
            rows = await db.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema()"
            )
            columns = {t: {r["column_name"] for r in rows if r["table_name"] == t} for t in SEEDED}
            inserts: list[tuple[str, list[Any]]] = []

            def insert(table: str, row: dict[str, Any]) -> None:
                row = {k: v for k, v in row.items() if k in columns[table]}
                marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
                inserts.append(
                    (f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", list(row.values()))
                )

            seed_rows(seed, insert, bool)
            async with db.transaction():
                for statement, args in inserts:
                    await db.execute(statement, *args)
        finally:
            await db.close()


#: Every backend the contract suite runs on, by name.
FACTORIES: dict[str, type[StoreFactory]] = {
    SqliteFactory.name: SqliteFactory,
    PostgresFactory.name: PostgresFactory,
}


def from_spec(spec: dict[str, str]) -> StoreFactory:
    return FACTORIES[spec["backend"]].from_spec(spec)
