"""The embedded state store: SQLite through aiosqlite, WAL, versioned migrations."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite
import anyio

from daemon.model import DirectoryObject, Group, User, decode, encode
from daemon.store import (
    Committed,
    Deactivation,
    Decision,
    DueRow,
    FactorRecord,
    Fence,
    Hold,
    Key,
    Lease,
    Link,
    LinkChanges,
    LogEntry,
    ObjectStatus,
    ParkedValue,
    Result,
    SessionRecord,
    StateError,
    StoreFull,
    TargetIndex,
    TargetLinks,
    TargetObject,
    TargetPlan,
    check_fence,
    phase,
    sql,
    timed,
)
from daemon.store.codec import (
    decision_of,
    dump,
    factor_of,
    factor_row,
    hold_keys,
    kind_of,
    load,
    log_entry_of,
    log_row,
    log_where,
    logins,
    msgspec_group,
    read_hold,
    target_object_of,
)

__all__ = ["MIGRATIONS", "SqliteStore", "StateError"]

# Each entry upgrades the schema by one version. Never edit a released entry;
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE directory_objects (
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        hash TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, object_id)
    );
    CREATE TABLE target_objects (
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        remote_id TEXT,
        desired_hash TEXT,
        desired TEXT,
        active INTEGER,
        written_hash TEXT,
        written TEXT,
        dirty INTEGER NOT NULL DEFAULT 1,
        phase INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (target, kind, object_id)
    );
    CREATE INDEX target_objects_due
        ON target_objects (target, dirty, phase, next_attempt_at);
    CREATE TABLE holds (
        target TEXT PRIMARY KEY,
        keys TEXT NOT NULL,
        created_at REAL NOT NULL,
        approved INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: sign-in looks users up by username or email.
    """
    ALTER TABLE directory_objects ADD COLUMN login_username TEXT;
    ALTER TABLE directory_objects ADD COLUMN login_email TEXT;
    CREATE INDEX directory_objects_username ON directory_objects (login_username);
    CREATE INDEX directory_objects_email ON directory_objects (login_email);
    """,
    # 3: what targets remember about their remote objects (formerly a private
    # file per target), and per-target values.
    """
    CREATE TABLE target_links (
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        remote_id TEXT,
        body TEXT NOT NULL,
        PRIMARY KEY (target, kind, object_id)
    );
    CREATE TABLE target_deactivations (
        target TEXT NOT NULL,
        object_id TEXT NOT NULL,
        remote_id TEXT NOT NULL,
        deactivated_at REAL NOT NULL,
        PRIMARY KEY (target, object_id)
    );
    CREATE TABLE target_meta (
        target TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (target, key)
    );
    """,
    # 4: leases for leader election among replicas ("source", "target:<name>"); the
    # term is the fencing token of every write a leader makes.
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        term INTEGER NOT NULL,
        acquired_at REAL NOT NULL,
        renewed_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    # 5: sign-in state shared by every process on the database: sessions,
    # replay claims (SAML request IDs), parked requests (resume handles) and
    # failed sign-ins. Every row has an expiry, indexed for the purge.
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        session_index TEXT NOT NULL,
        user_id TEXT NOT NULL,
        data TEXT NOT NULL,
        last_seen REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX sessions_session_index ON sessions (session_index);
    CREATE INDEX sessions_user ON sessions (user_id, last_seen);
    CREATE INDEX sessions_expiry ON sessions (expires_at);
    CREATE TABLE claims (
        key TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    CREATE INDEX claims_expiry ON claims (expires_at);
    CREATE TABLE parked (
        handle TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        parked_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX parked_expiry ON parked (expires_at);
    CREATE TABLE login_failures (
        key TEXT NOT NULL,
        at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures (key, at);
    CREATE INDEX login_failures_expiry ON login_failures (expires_at);
    """,
    # 6: second factors (TOTP keys, passkeys, recovery codes), kept until removed.
    """
    CREATE TABLE mfa_factors (
        user_id TEXT NOT NULL,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        used_at REAL,
        PRIMARY KEY (user_id, id)
    );
    """,
    # 7: the provisioning log (every operation decided or made, per target and
    # object), and operators' decisions on held keys.
    """
    CREATE TABLE provisioning_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        cycle TEXT,
        outcome TEXT NOT NULL,
        changes TEXT NOT NULL,
        attributes TEXT NOT NULL,
        method TEXT,
        path TEXT,
        status INTEGER,
        error TEXT,
        actor TEXT
    );
    CREATE INDEX provisioning_log_object ON provisioning_log (kind, object_id, id);
    CREATE INDEX provisioning_log_target ON provisioning_log (target, id);
    CREATE INDEX provisioning_log_at ON provisioning_log (at);
    CREATE TABLE hold_decisions (
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        decision TEXT NOT NULL,
        actor TEXT NOT NULL,
        decided_at REAL NOT NULL,
        directory_hash TEXT,
        applied INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (target, kind, object_id)
    );
    """,
)


# Row-at-a-time forms of the bulk writes (PostgreSQL sends arrays instead).
_VALUES_DIRECTORY = "VALUES (?, ?, ?, ?, ?, ?)"
_VALUES_PLAN = "VALUES (?, ?, ?, ?, ?, ?, TRUE, ?, 0, 0, ?)"
_DELETE_DIRECTORY = "DELETE FROM directory_objects WHERE kind = ? AND object_id = ?"
_DELETE_TARGET_OBJECT = "DELETE FROM target_objects WHERE target = ? AND kind = ? AND object_id = ?"

#: :data:`sql.FORGET_UNWRITTEN` for one row.
_FORGET_UNWRITTEN_ROW = f"{_DELETE_TARGET_OBJECT} AND desired_hash IS NULL AND written_hash IS NULL"

#: A delivered removal is the end of the object for this target, unless the
#: desired state changed meanwhile (hash guard).
_RECORD_REMOVED = f"{_DELETE_TARGET_OBJECT} AND desired_hash IS NULL"

#: The remote id is kept even when the hash guard refuses the rest: the object
#: exists remotely, and without its id the next delivery would create it twice.
_RECORD_REMOTE_ID = (
    "UPDATE target_objects SET remote_id = ? WHERE target = ? AND kind = ? AND object_id = ?"
)

_RECORD_WRITTEN = """
    UPDATE target_objects SET
        written_hash = desired_hash, written = desired, dirty = FALSE,
        attempts = 0, last_error = NULL, next_attempt_at = 0, updated_at = ?
    WHERE target = ? AND kind = ? AND object_id = ? AND desired_hash IS NOT DISTINCT FROM ?
"""

_RECORD_FAILED = """
    UPDATE target_objects SET
        remote_id = COALESCE(?, remote_id), attempts = attempts + 1,
        last_error = ?, next_attempt_at = ?, updated_at = ?
    WHERE target = ? AND kind = ? AND object_id = ?
"""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _read(
    method: Callable[Concatenate[SqliteStore, _P], Awaitable[_T]],
) -> Callable[Concatenate[SqliteStore, _P], Coroutine[Any, Any, _T]]:
    """Run a read method under the store's lock, in one read transaction."""

    @functools.wraps(method)
    async def read(self: SqliteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._reading():
            return await method(self, *args, **kwargs)

    return read


def _reachable(
    method: Callable[Concatenate[SqliteStore, _P], Awaitable[_T]],
) -> Callable[Concatenate[SqliteStore, _P], Coroutine[Any, Any, _T]]:
    """Report a database that cannot be used now (locked, I/O, closed) as StateError.

    The sign-in methods answer web requests: their callers show a clean
    "try again" page for a StateError instead of a failure.
    """

    @functools.wraps(method)
    async def call(self: SqliteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(self, *args, **kwargs)
        except (aiosqlite.OperationalError, aiosqlite.ProgrammingError) as exc:
            raise StateError(f"state database {self.path}: {exc}") from exc

    return call


def _read_one(
    method: Callable[Concatenate[SqliteStore, _P], Awaitable[_T]],
) -> Callable[Concatenate[SqliteStore, _P], Coroutine[Any, Any, _T]]:
    """Run a read of ONE statement under the store's lock.

    Under the lock no other task's transaction is open on the connection, and
    one statement in autocommit mode reads one committed snapshot, so it needs
    no BEGIN and COMMIT of its own (the hot path of a quiet cycle).
    """

    @functools.wraps(method)
    async def read(self: SqliteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._tx:
            return await method(self, *args, **kwargs)

    return read


@timed
class SqliteStore:
    """:class:`daemon.store.Store` on one SQLite file.

    One connection serves every task, so every method runs under one lock,
    reads included: ``_transaction()`` for writes, ``@_read`` (``_reading()``,
    one read transaction) for reads of several statements, and ``@_read_one``
    for a read of one statement, which is its own snapshot. Without the lock a
    read could see another task's uncommitted rows, and a write could join (and
    roll back with) another task's transaction. A method holding the lock calls
    only the underscored helpers, never another public method.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._tx = anyio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StateError("the state store is not open")
        return self._db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self.db.execute("PRAGMA busy_timeout=5000")
            await self._use_wal()
            # FULL: a committed cycle survives power loss, not only kill -9.
            await self.db.execute("PRAGMA synchronous=FULL")
            await self._migrate()
        except (OSError, aiosqlite.Error) as exc:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise StateError(f"cannot open state database {self.path}: {exc}") from None
        except BaseException:
            # A connection left open is a thread that keeps the process alive.
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise

    async def _use_wal(self) -> None:
        # Two processes opening a new file at once: the switch to WAL can fail
        # at once with "database is locked", without waiting; try again.
        deadline = time.monotonic() + 5
        while True:
            try:
                await self.db.execute("PRAGMA journal_mode=WAL")
                return
            except aiosqlite.OperationalError:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.01)

    async def _migrate(self) -> None:
        expected = len(MIGRATIONS)
        while True:
            # The version is read in the transaction that upgrades it: another
            # process opening the same new file at once waits, then sees it.
            async with self._transaction():
                async with self.db.execute("PRAGMA user_version") as cur:
                    row = await cur.fetchone()
                current = int(row[0]) if row else 0
                if current > expected:
                    raise StateError(
                        f"state database {self.path} is at schema version {current}, but this "
                        f"provisiond expects schema version {expected}: it was written by a "
                        "newer provisiond; upgrade provisiond"
                    )
                if current == expected:
                    break
                for statement in _statements(MIGRATIONS[current]):
                    await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version={current + 1}")
        await self._fill_logins()

    async def _fill_logins(self) -> None:
        """Fold the sign-in names of users stored before migration 2 added their columns."""
        async with self.db.execute(f"SELECT 1 {sql.MISSING_LOGINS} LIMIT 1") as cur:
            if await cur.fetchone() is None:
                return
        async with self._transaction():
            async with self.db.execute(f"SELECT object_id, data {sql.MISSING_LOGINS}") as cur:
                rows = [(*logins(decode("user", data)), oid) async for oid, data in cur]
            await self.db.executemany(sql.FILL_LOGINS, rows)

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> AsyncIterator[None]:
        async with self._tx:
            # Shielded like the end: a BEGIN that ran but whose caller was
            # cancelled would leave a transaction open that nobody ends.
            with anyio.CancelScope(shield=True):
                await self.db.execute(begin)
            try:
                yield
            except BaseException:
                # Shielded: a cancelled cycle still leaves the database consistent.
                with anyio.CancelScope(shield=True):
                    await self.db.execute("ROLLBACK")
                raise
            with anyio.CancelScope(shield=True):
                try:
                    await self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:
                        await self.db.execute("ROLLBACK")
                    raise

    def _reading(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A read: committed data only, one snapshot for all its statements."""
        return self._transaction("BEGIN")

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @_read_one
    async def check(self) -> list[str]:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return [
            f"state store SQLite {sqlite3.sqlite_version} database {self.path}",
            f"state store schema version {row[0] if row else 0} "
            f"(this provisiond: {len(MIGRATIONS)})",
        ]

    @_read_one
    async def get_meta(self, key: str) -> str | None:
        return await self._get_meta(key)

    async def set_meta(self, key: str, value: str, *, fence: Fence | None = None) -> None:
        async with self._transaction():
            await self._check_fence(fence)
            await self._set_meta(key, value)

    async def _get_meta(self, key: str) -> str | None:
        async with self.db.execute(sql.GET_META, (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def _set_meta(self, key: str, value: str) -> None:
        await self.db.execute(sql.SET_META, (key, value))

    @_read
    async def committed(self) -> Committed:
        version = await self._get_meta("snapshot_version")
        hashes: dict[Key, str] = {}
        async with self.db.execute(sql.COMMITTED_HASHES) as cur:
            async for kind, object_id, h in cur:
                hashes[(kind_of(kind), object_id)] = h
        return Committed(version, hashes)

    @_read
    async def records(self, keys: list[Key]) -> dict[Key, DirectoryObject]:
        out: dict[Key, DirectoryObject] = {}
        for chunk in _chunks(keys, 400):
            where = " OR ".join("(kind = ? AND object_id = ?)" for _ in chunk)
            params = [v for key in chunk for v in key]
            statement = f"SELECT kind, object_id, data FROM directory_objects WHERE {where}"  # noqa: S608
            async with self.db.execute(statement, params) as cur:
                async for kind, object_id, data in cur:
                    obj = load(kind, data)
                    assert obj is not None
                    out[(kind_of(kind), object_id)] = obj
        return out

    @_read_one
    async def groups(self) -> list[Group]:
        async with self.db.execute(sql.GROUPS) as cur:
            return [msgspec_group(data) async for (data,) in cur]

    @_read_one
    async def find_user(self, login: str) -> User | None:
        folded = login.strip().casefold()
        async with self.db.execute(sql.FIND_USER, (folded, folded, folded)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        user = decode("user", row[0])
        assert isinstance(user, User)
        return user

    @_read_one
    async def granted(self, target: str, user_id: str) -> bool:
        async with self.db.execute(sql.GRANTED, (target, user_id)) as cur:
            row = await cur.fetchone()
        return bool(row and row[0])

    @_read_one
    async def target_index(self, target: str) -> TargetIndex:
        index = TargetIndex()
        async with self.db.execute(sql.TARGET_INDEX, (target,)) as cur:
            async for kind, object_id, desired_hash, active in cur:
                index.hashes[(kind_of(kind), object_id)] = desired_hash
                if kind == "user" and active:
                    index.active.add(object_id)
        return index

    async def commit(
        self,
        version: str,
        upserts: list[tuple[Key, str, DirectoryObject]],
        deletes: list[Key],
        plans: dict[str, TargetPlan],
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        now = time.time()
        async with self._transaction():
            await self._check_fence(fence)
            for target, plan in plans.items():
                await self._write_plan(target, plan, now)
            await self._write_log(log)
            await self.db.executemany(
                sql.upsert_directory(_VALUES_DIRECTORY),
                ((k[0], k[1], h, encode(obj).decode(), *logins(obj)) for k, h, obj in upserts),
            )
            await self.db.executemany(_DELETE_DIRECTORY, deletes)
            await self._set_meta("snapshot_version", version)
            await self._set_meta("snapshot_committed_at", repr(now))

    async def _write_plan(self, target: str, plan: TargetPlan, now: float) -> None:
        # Rows are encoded as SQLite takes them (a generator), so that a first sync
        # never holds every encoded record at once.
        await self.db.executemany(
            sql.upsert_plan(_VALUES_PLAN),
            (
                (
                    target,
                    row.key[0],
                    row.key[1],
                    row.hash,
                    dump(row.obj),
                    None if row.active is None else int(row.active),
                    phase(row.key[0], row.obj is None),
                    now,
                )
                for row in plan.desired
            ),
        )
        released = [(target, k[0], k[1]) for k in plan.released]
        await self.db.executemany(_DELETE_TARGET_OBJECT, released)
        # A released object is no longer managed: the target forgets its link too.
        await self.db.executemany(sql.DELETE_LINK, released)
        # Only this plan's removals can be unwritten removals (each commit forgets
        # them), so look at those rows, not at every row of the target.
        await self.db.executemany(
            _FORGET_UNWRITTEN_ROW,
            [(target, row.key[0], row.key[1]) for row in plan.desired if row.hash is None],
        )
        if plan.hold is None:
            await self.db.execute(sql.DELETE_HOLD, (target,))
        else:
            await self.db.execute(sql.SET_HOLD, (target, hold_keys(plan.hold), now))
        for settled in plan.settled:
            statement = sql.KEEP_DECISION if settled.keep else sql.DROP_DECISION
            await self.db.execute(statement, (target, *settled.key, settled.decided_at))

    async def _write_log(self, log: Sequence[LogEntry]) -> None:
        if log:
            await self.db.executemany(sql.INSERT_LOG_ROW, [log_row(e) for e in log])

    @_read_one
    async def due(self, target: str, now: float, limit: int) -> list[DueRow]:
        rows: list[DueRow] = []
        async with self.db.execute(sql.DUE, (target, now, limit)) as cur:
            async for kind, object_id, remote_id, dh, desired, written, attempts in cur:
                rows.append(
                    DueRow(
                        key=(kind_of(kind), object_id),
                        remote_id=remote_id,
                        desired_hash=dh,
                        desired=load(kind, desired),
                        written=load(kind, written),
                        attempts=attempts,
                    )
                )
        return rows

    @_read
    async def rows(self, target: str, keys: list[Key] | None) -> dict[Key, DueRow]:
        base = f"{sql.ROWS} WHERE target = ?"
        batches: list[tuple[str, list[Any]]] = []
        if keys is None:
            batches.append((sql.DIRTY_ROWS, [target]))
        else:
            for chunk in _chunks(keys, 400):
                where = " OR ".join("(kind = ? AND object_id = ?)" for _ in chunk)
                batches.append((f"{base} AND ({where})", [target, *(v for k in chunk for v in k)]))
        out: dict[Key, DueRow] = {}
        for statement, params in batches:
            async with self.db.execute(statement, params) as cur:
                async for kind, object_id, remote_id, dh, desired, written, attempts in cur:
                    key: Key = (kind_of(kind), object_id)
                    out[key] = DueRow(
                        key, remote_id, dh, load(kind, desired), load(kind, written), attempts
                    )
        return out

    @_read_one
    async def target_object(self, target: str, key: Key) -> TargetObject | None:
        row = await self._one(sql.TARGET_OBJECT, target, *key)
        return None if row is None else target_object_of(row)

    @_read_one
    async def approved_holds(self) -> list[str]:
        async with self.db.execute(sql.APPROVED_HOLDS) as cur:
            return [str(row[0]) async for row in cur]

    async def record(
        self,
        target: str,
        results: list[Result],
        now: float,
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        ok = [r for r in results if r.ok]
        failed = [r for r in results if not r.ok]
        async with self._transaction():
            await self._check_fence(fence)
            await self._write_log(log)
            await self.db.executemany(
                _RECORD_REMOVED,
                [(target, r.key[0], r.key[1]) for r in ok if r.delivered_hash is None],
            )
            await self.db.executemany(
                _RECORD_REMOTE_ID,
                [(r.remote_id, target, r.key[0], r.key[1]) for r in ok if r.remote_id is not None],
            )
            await self.db.executemany(
                _RECORD_WRITTEN,
                [
                    (now, target, r.key[0], r.key[1], r.delivered_hash)
                    for r in ok
                    if r.delivered_hash is not None
                ],
            )
            await self.db.executemany(
                _RECORD_FAILED,
                [
                    (r.remote_id, r.error, r.next_attempt_at, now, target, r.key[0], r.key[1])
                    for r in failed
                ],
            )

    @_read_one
    async def counts(self, target: str) -> tuple[int, int]:
        async with self.db.execute(sql.COUNTS, (target,)) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    @_read_one
    async def problems(self, target: str, limit: int) -> list[ObjectStatus]:
        out: list[ObjectStatus] = []
        async with self.db.execute(sql.PROBLEMS, (target, limit)) as cur:
            async for kind, object_id, attempts, last_error, nxt in cur:
                out.append(
                    ObjectStatus((kind_of(kind), object_id), "failed", attempts, last_error, nxt)
                )
        return out

    @_read_one
    async def hold(self, target: str) -> Hold | None:
        return await self._hold(target)

    async def _hold(self, target: str) -> Hold | None:
        async with self.db.execute(sql.HOLD, (target,)) as cur:
            row = await cur.fetchone()
        return None if row is None else read_hold(target, *row)

    async def approve(self, target: str, keys: frozenset[Key] | None = None) -> int:
        # One transaction: the count returned is that of the hold approved.
        async with self._transaction():
            hold = await self._hold(target)
            if hold is None or (keys is not None and hold.keys != keys):
                return 0
            await self.db.execute(sql.APPROVE, (target,))
        return len(hold.keys)

    async def retry_now(self, target: str, keys: Sequence[Key], now: float) -> int:
        changed = 0
        async with self._transaction():
            for kind, object_id in keys:
                cur = await self.db.execute(sql.RETRY_NOW, (now, target, kind, object_id))
                changed += max(cur.rowcount, 0)
        return changed

    @_read_one
    async def search_users(self, text: str, limit: int) -> list[User]:
        pattern = sql.like_pattern(text)
        out: list[User] = []
        async with self.db.execute(sql.SEARCH_USERS, (pattern, pattern, pattern, limit)) as cur:
            async for (data,) in cur:
                user = decode("user", data)
                assert isinstance(user, User)
                out.append(user)
        return out
    async def decide(
        self, target: str, keys: Sequence[Key], decision: str, actor: str, at: float
    ) -> list[Key]:
        async with self._transaction():
            hold = await self._hold(target)
            known = set(hold.keys) if hold is not None else set()
            async with self.db.execute(sql.DECISIONS, (target,)) as cur:
                known.update([decision_of(row).key async for row in cur])
            decided = sorted(k for k in set(keys) if k in known)
            for key in decided:
                row = await self._one(sql.DIRECTORY_HASH, *key)
                await self.db.execute(
                    sql.PUT_DECISION,
                    (target, *key, decision, actor, at, None if row is None else row[0]),
                )
            await self._write_log(
                [LogEntry(at, target, k, decision, actor=actor) for k in decided]
            )
        return decided

    @_read_one
    async def decisions(self, target: str) -> dict[Key, Decision]:
        async with self.db.execute(sql.DECISIONS, (target,)) as cur:
            return {d.key: d for d in [decision_of(row) async for row in cur]}

    @_read_one
    async def log_entries(
        self,
        *,
        target: str | None = None,
        key: Key | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[LogEntry]:
        filters, values = log_where(target, key, before)
        async with self.db.execute(sql.log_query(filters), (*values, limit)) as cur:
            return [log_entry_of(row) async for row in cur]

    async def purge_log(self, before: float, limit: int) -> int:
        async with self._transaction():
            cur = await self.db.execute(sql.PURGE_LOG, (before, limit))
            return int(cur.rowcount)

    @_read
    async def target_links(self, target: str) -> TargetLinks:
        links: dict[Key, Link] = {}
        async with self.db.execute(sql.LINKS, (target,)) as cur:
            async for kind, object_id, remote_id, body in cur:
                links[(kind_of(kind), object_id)] = Link(remote_id, json.loads(body))
        deactivations: dict[str, Deactivation] = {}
        async with self.db.execute(sql.DEACTIVATIONS, (target,)) as cur:
            async for object_id, remote_id, at in cur:
                deactivations[object_id] = Deactivation(remote_id, float(at))
        return TargetLinks(links, deactivations)

    async def save_links(
        self, target: str, changes: LinkChanges, *, fence: Fence | None = None
    ) -> None:
        if not changes:
            return
        put = [(k, v) for k, v in changes.links.items() if v is not None]
        gone = [k for k, v in changes.links.items() if v is None]
        async with self._transaction():
            await self._check_fence(fence)
            await self.db.executemany(
                sql.UPSERT_LINK,
                [(target, k[0], k[1], v.remote_id, json.dumps(v.body)) for k, v in put],
            )
            await self.db.executemany(sql.DELETE_LINK, [(target, k[0], k[1]) for k in gone])
            await self.db.executemany(
                sql.UPSERT_DEACTIVATION,
                [
                    (target, oid, d.remote_id, d.at)
                    for oid, d in changes.deactivations.items()
                    if d is not None
                ],
            )
            await self.db.executemany(
                sql.DELETE_DEACTIVATION,
                [(target, oid) for oid, d in changes.deactivations.items() if d is None],
            )
            for key, value in changes.meta.items():
                await self._set_target_meta(target, key, value)

    @_read_one
    async def target_meta(self, target: str, key: str) -> str | None:
        async with self.db.execute(sql.TARGET_META, (target, key)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_target_meta(
        self, target: str, key: str, value: str, *, fence: Fence | None = None
    ) -> None:
        async with self._transaction():
            await self._check_fence(fence)
            await self._set_target_meta(target, key, value)

    async def _set_target_meta(self, target: str, key: str, value: str) -> None:
        await self.db.execute(sql.SET_TARGET_META, (target, key, value))

    # -- leases ------------------------------------------------------------------------
    #
    # The store's clock is this host's: every process on one SQLite file runs on
    # one host. Writes hold the database's write lock (BEGIN IMMEDIATE) from the
    # first statement, so an acquire and a fenced write never interleave.

    async def acquire_lease(self, name: str, holder: str, seconds: float) -> Lease | None:
        async with self._transaction():
            now = time.time()
            current = await self._lease(name, now)
            if current is None:
                await self.db.execute(sql.INSERT_LEASE, (name, holder, 1, now, now, now + seconds))
                return Lease(name, holder, 1, now, now, now + seconds, seconds)
            if current.live and current.holder == holder:
                await self.db.execute(sql.RENEW_LEASE, (now, now + seconds, name))
                return Lease(
                    name, holder, current.term, current.acquired_at, now, now + seconds, seconds
                )
            if current.live:
                return None
            term = current.term + 1
            await self.db.execute(
                sql.TAKE_LEASE, (holder, term, now, now, now + seconds, name)
            )
            return Lease(name, holder, term, now, now, now + seconds, seconds)

    async def release_lease(self, name: str, holder: str, term: int) -> None:
        async with self._transaction():
            now = time.time()
            await self.db.execute(sql.RELEASE_LEASE, (now, name, holder, term, now))

    @_read_one
    async def leases(self) -> list[Lease]:
        now = time.time()
        async with self.db.execute(sql.LEASES) as cur:
            return [
                Lease(name, holder, int(term), float(a), float(r), float(e), float(e) - now)
                async for name, holder, term, a, r, e in cur
            ]

    async def _lease(self, name: str, now: float) -> Lease | None:
        async with self.db.execute(sql.LEASE, (name,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        holder, term, acquired, renewed, expires = row
        return Lease(
            name, holder, int(term), float(acquired), float(renewed), float(expires),
            float(expires) - now,
        )

    async def _check_fence(self, fence: Fence | None) -> None:
        """Inside a write transaction: raise :class:`FencedOut` unless ``fence`` still holds."""
        if fence is None:
            return
        check_fence(fence, await self._lease(fence.lease, time.time()))

    # -- sign-in state -------------------------------------------------------------------
    # BEGIN IMMEDIATE takes the database's write lock, so each of these is
    # atomic across processes; the statements are the ones PostgreSQL runs too.

    @_reachable
    async def init_meta(self, key: str, value: str) -> str:
        async with self._transaction():
            await self.db.execute(sql.INIT_META, (key, value))
            stored = await self._get_meta(key)
        assert stored is not None
        return stored

    @_reachable
    async def claim(self, key: str, expires_at: float, now: float, limit: int) -> bool:
        async with self._transaction():
            await self.db.execute(sql.DELETE_EXPIRED["claims"], (now,))
            if await self._one(sql.CLAIM_HELD, key, now) is not None:
                return False
            if await self._count("claims") >= limit:
                raise StoreFull("claims")
            return await self._one(sql.CLAIM, key, expires_at, now) is not None

    @_reachable
    async def park(
        self, handle: str, value: str, parked_at: float, expires_at: float, now: float, limit: int
    ) -> None:
        async with self._transaction():
            await self.db.execute(sql.DELETE_EXPIRED["parked"], (now,))
            if await self._count("parked") >= limit:
                raise StoreFull("parked")
            await self.db.execute(sql.PARK, (handle, value, parked_at, expires_at))

    @_reachable
    async def take_parked(self, handle: str, now: float) -> ParkedValue | None:
        async with self._transaction():
            row = await self._one(sql.TAKE_PARKED, handle)
        if row is None or float(row[2]) <= now:
            return None
        return ParkedValue(str(row[0]), float(row[1]), float(row[2]))

    @_reachable
    @_read_one
    async def count_failures(self, key: str, since: float) -> int:
        row = await self._one(sql.COUNT_FAILURES, key, since)
        return int(row[0]) if row else 0

    @_reachable
    async def add_failures(self, keys: Sequence[str], at: float, expires_at: float) -> None:
        async with self._transaction():
            # The keys' own expired rows go at once; the others wait for purge().
            await self.db.executemany(sql.DELETE_EXPIRED_FAILURES_OF, [(key, at) for key in keys])
            await self.db.executemany(sql.ADD_FAILURE, [(key, at, expires_at) for key in keys])

    @_reachable
    async def clear_failures(self, key: str) -> None:
        async with self._transaction():
            await self.db.execute(sql.CLEAR_FAILURES, (key,))

    @_reachable
    @_read_one
    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._one(sql.GET_SESSION, session_id)
        if row is None:
            return None
        sid, index, user_id, data, last_seen, expires_at = row
        return SessionRecord(sid, index, user_id, data, float(last_seen), float(expires_at))

    @_reachable
    async def put_session(self, record: SessionRecord, now: float, per_user: int) -> None:
        r = record
        async with self._transaction():
            await self.db.execute(sql.DELETE_EXPIRED["sessions"], (now,))
            await self.db.execute(
                sql.PUT_SESSION,
                (r.id, r.session_index, r.user_id, r.data, r.last_seen, r.expires_at),
            )
            await self.db.execute(sql.TRIM_SESSIONS, (r.user_id, r.user_id, per_user))

    @_reachable
    async def touch_session(self, session_id: str, last_seen: float, expires_at: float) -> bool:
        async with self._transaction():
            cur = await self.db.execute(sql.TOUCH_SESSION, (last_seen, expires_at, session_id))
            return cur.rowcount == 1

    @_reachable
    async def delete_session(self, session_id: str) -> None:
        await self._delete_sessions("id", session_id)

    @_reachable
    async def delete_sessions_by_index(self, session_index: str) -> int:
        return await self._delete_sessions("session_index", session_index)

    @_reachable
    async def delete_user_sessions(self, user_id: str) -> int:
        return await self._delete_sessions("user_id", user_id)

    async def _delete_sessions(self, column: str, value: str) -> int:
        async with self._transaction():
            cur = await self.db.execute(sql.DELETE_SESSIONS[column], (value,))
            return int(cur.rowcount)

    @_reachable
    async def purge(self, now: float) -> int:
        gone = 0
        async with self._transaction():
            for statement in sql.DELETE_EXPIRED.values():
                cur = await self.db.execute(statement, (now,))
                gone += int(cur.rowcount)
        return gone

    # -- second factors ------------------------------------------------------------------

    @_reachable
    @_read_one
    async def factors(self, user_id: str) -> list[FactorRecord]:
        async with self.db.execute(sql.FACTORS, (user_id,)) as cur:
            return [factor_of(row) async for row in cur]

    @_reachable
    async def put_factor(self, record: FactorRecord) -> None:
        async with self._transaction():
            await self.db.execute(sql.PUT_FACTOR, factor_row(record))

    @_reachable
    async def swap_factor(
        self, user_id: str, factor_id: str, expected_data: str, data: str, used_at: float
    ) -> bool:
        async with self._transaction():
            cur = await self.db.execute(
                sql.SWAP_FACTOR, (data, used_at, user_id, factor_id, expected_data)
            )
            return cur.rowcount == 1

    @_reachable
    async def delete_factor(self, user_id: str, factor_id: str) -> bool:
        async with self._transaction():
            cur = await self.db.execute(sql.DELETE_FACTOR, (user_id, factor_id))
            return cur.rowcount == 1

    @_reachable
    async def delete_factors(self, user_id: str, kind: str | None = None) -> int:
        async with self._transaction():
            if kind is None:
                cur = await self.db.execute(sql.DELETE_FACTORS, (user_id,))
            else:
                cur = await self.db.execute(sql.DELETE_FACTORS_OF_KIND, (user_id, kind))
            return int(cur.rowcount)

    @_reachable
    @_read_one
    async def factor_users(self) -> list[tuple[str, int]]:
        async with self.db.execute(sql.FACTOR_USERS) as cur:
            return [(str(user_id), int(count)) async for user_id, count in cur]

    async def _one(self, statement: str, *args: Any) -> Any:
        """The first row of ``statement`` (the rest is read too, for a RETURNING)."""
        async with self.db.execute(statement, args) as cur:
            rows = list(await cur.fetchall())
        return rows[0] if rows else None

    async def _count(self, table: str) -> int:
        row = await self._one(sql.COUNT_ROWS[table])
        return int(row[0]) if row else 0


def _statements(script: str) -> Iterable[str]:
    for part in script.split(";"):
        if part.strip():
            yield part


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
