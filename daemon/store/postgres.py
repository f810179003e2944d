"""The PostgreSQL state store: asyncpg, a connection pool, versioned migrations.

Several provisiond processes can share one database. Every method is one
transaction on a connection of its own from the pool:

- ``@_writes``: a READ COMMITTED transaction, retried whole when PostgreSQL
  aborts it for a deadlock or a serialization failure (its body is a pure
  function of its arguments, so running it again is safe);
- ``@_reads``: a REPEATABLE READ READ ONLY transaction, one snapshot for a
  read of several statements;
- ``@_reads_one``: one statement outside any transaction, its own snapshot.

BEGIN, COMMIT and ROLLBACK run shielded from cancellation, so a cancelled
call either committed whole or left nothing behind (a connection whose
ROLLBACK fails is terminated: the server then rolls back itself).

The schema's versions are rows of ``schema_version``; migrations run under
a transaction-level advisory lock, so replicas starting together on an
empty database take turns and all succeed. Version numbers mean the same
schema as in :mod:`daemon.store.sqlite`. The SQL that is the same on both
backends lives in :mod:`daemon.store.sql`; bulk writes go as arrays
(``unnest``) in one statement each.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import anyio
import asyncpg

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
    StoreUnavailable,
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
from daemon.store.sql import numbered

__all__ = ["MIGRATIONS", "SCHEMA_VERSION_TABLE", "PostgresStore", "SslMode", "tls_option"]

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]

#: How long a session may sit idle inside a transaction before the server ends it
#: (no provisiond transaction waits on anything but the database in between).
IDLE_IN_TRANSACTION_MS = "5000"

#: Settings every session gets at connection start-up, or behind a transaction
#: pooler every transaction (``SET LOCAL``), as poolers refuse them at start-up.
_SESSION_SETTINGS = {
    "jit": "off",
    # A replica stalled inside a transaction (a paused process) would hold its
    # row locks, the lease row's among them, until it woke: the server ends
    # such a session instead, so another replica can take the lease over once
    # it expires.
    "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_MS,
}

#: The advisory lock migrations hold (``pg_advisory_xact_lock``): "provisio" in ASCII.
MIGRATION_LOCK = 0x70726F7669736F00

SCHEMA_VERSION_TABLE = """
    CREATE TABLE schema_version (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""

# Each entry upgrades the schema by one version, as the entry of the same
# number in daemon.store.sqlite does. Never edit a released entry; append.
# Keys compare bytewise (COLLATE "C"), as in SQLite: delivery order is the same.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key text COLLATE "C" PRIMARY KEY,
        value text NOT NULL
    );
    CREATE TABLE directory_objects (
        kind text COLLATE "C" NOT NULL,
        object_id text COLLATE "C" NOT NULL,
        hash text NOT NULL,
        data text NOT NULL,
        PRIMARY KEY (kind, object_id)
    );
    CREATE TABLE target_objects (
        target text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        object_id text COLLATE "C" NOT NULL,
        remote_id text,
        desired_hash text,
        desired text,
        active boolean,
        written_hash text,
        written text,
        dirty boolean NOT NULL DEFAULT TRUE,
        phase smallint NOT NULL DEFAULT 0,
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        next_attempt_at double precision NOT NULL DEFAULT 0,
        updated_at double precision NOT NULL,
        PRIMARY KEY (target, kind, object_id)
    );
    -- Due work in delivery order, and the dirty counts, read only dirty rows.
    CREATE INDEX target_objects_due
        ON target_objects (target, phase, kind, object_id) WHERE dirty;
    CREATE TABLE holds (
        target text COLLATE "C" PRIMARY KEY,
        keys text NOT NULL,
        created_at double precision NOT NULL,
        approved boolean NOT NULL DEFAULT FALSE
    );
    """,
    # 2: sign-in looks users up by username or email.
    """
    ALTER TABLE directory_objects
        ADD COLUMN login_username text COLLATE "C",
        ADD COLUMN login_email text COLLATE "C";
    CREATE INDEX directory_objects_username ON directory_objects (login_username);
    CREATE INDEX directory_objects_email ON directory_objects (login_email);
    """,
    # 3: what targets remember about their remote objects, and per-target values.
    """
    CREATE TABLE target_links (
        target text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        object_id text COLLATE "C" NOT NULL,
        remote_id text,
        body text NOT NULL,
        PRIMARY KEY (target, kind, object_id)
    );
    CREATE TABLE target_deactivations (
        target text COLLATE "C" NOT NULL,
        object_id text COLLATE "C" NOT NULL,
        remote_id text NOT NULL,
        deactivated_at double precision NOT NULL,
        PRIMARY KEY (target, object_id)
    );
    CREATE TABLE target_meta (
        target text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value text NOT NULL,
        PRIMARY KEY (target, key)
    );
    """,
    # 4: leases for leader election among replicas; the term is the fencing token.
    """
    CREATE TABLE leases (
        name text COLLATE "C" PRIMARY KEY,
        holder text NOT NULL,
        term bigint NOT NULL,
        acquired_at double precision NOT NULL,
        renewed_at double precision NOT NULL,
        expires_at double precision NOT NULL
    );
    """,
    # 5: sign-in state shared by every replica: sessions, replay claims (SAML
    # request IDs), parked requests (resume handles) and failed sign-ins.
    # Every row has an expiry, indexed for the purge.
    """
    CREATE TABLE sessions (
        id text COLLATE "C" PRIMARY KEY,
        session_index text COLLATE "C" NOT NULL,
        user_id text COLLATE "C" NOT NULL,
        data text NOT NULL,
        last_seen double precision NOT NULL,
        expires_at double precision NOT NULL
    );
    CREATE INDEX sessions_session_index ON sessions (session_index);
    CREATE INDEX sessions_user ON sessions (user_id, last_seen);
    CREATE INDEX sessions_expiry ON sessions (expires_at);
    CREATE TABLE claims (
        key text COLLATE "C" PRIMARY KEY,
        expires_at double precision NOT NULL
    );
    CREATE INDEX claims_expiry ON claims (expires_at);
    CREATE TABLE parked (
        handle text COLLATE "C" PRIMARY KEY,
        value text NOT NULL,
        parked_at double precision NOT NULL,
        expires_at double precision NOT NULL
    );
    CREATE INDEX parked_expiry ON parked (expires_at);
    CREATE TABLE login_failures (
        key text COLLATE "C" NOT NULL,
        at double precision NOT NULL,
        expires_at double precision NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures (key, at);
    CREATE INDEX login_failures_expiry ON login_failures (expires_at);
    """,
    # 6: second factors (TOTP keys, passkeys, recovery codes), kept until removed.
    """
    CREATE TABLE mfa_factors (
        user_id text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        kind text NOT NULL,
        name text NOT NULL,
        data text NOT NULL,
        created_at double precision NOT NULL,
        used_at double precision,
        PRIMARY KEY (user_id, id)
    );
    """,
    # 7: the provisioning log, and operators' decisions on held keys.
    """
    CREATE TABLE provisioning_log (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at double precision NOT NULL,
        target text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        object_id text COLLATE "C" NOT NULL,
        cycle text,
        outcome text NOT NULL,
        changes text NOT NULL,
        attributes text NOT NULL,
        method text,
        path text,
        status integer,
        error text,
        actor text
    );
    CREATE INDEX provisioning_log_object ON provisioning_log (kind, object_id, id);
    CREATE INDEX provisioning_log_target ON provisioning_log (target, id);
    CREATE INDEX provisioning_log_at ON provisioning_log (at);
    CREATE TABLE hold_decisions (
        target text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        object_id text COLLATE "C" NOT NULL,
        decision text NOT NULL,
        actor text NOT NULL,
        decided_at double precision NOT NULL,
        directory_hash text,
        applied boolean NOT NULL DEFAULT FALSE,
        PRIMARY KEY (target, kind, object_id)
    );
    """,
)

# -- the bulk forms: one statement per batch, its rows as arrays ----------------------------

_KEYS = "unnest(?::text[], ?::text[]) AS k(kind, object_id)"

_UPSERT_DIRECTORY = numbered(
    sql.upsert_directory(
        "SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[])"
    )
)
_DELETE_DIRECTORY = numbered(
    f"DELETE FROM directory_objects AS d USING {_KEYS} "
    "WHERE d.kind = k.kind AND d.object_id = k.object_id"
)
_UPSERT_PLAN = numbered(
    sql.upsert_plan(
        "SELECT ?::text, r.kind, r.object_id, r.desired_hash, r.desired, r.active, "
        "TRUE, r.phase, 0, 0, ?::double precision "
        "FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::boolean[], ?::smallint[]) "
        "AS r(kind, object_id, desired_hash, desired, active, phase)"
    )
)
_RELEASE = {
    table: numbered(
        f"DELETE FROM {table} AS t USING {_KEYS} "
        "WHERE t.target = ? AND t.kind = k.kind AND t.object_id = k.object_id"
    )
    for table in ("target_objects", "target_links")
}
# sql.FORGET_UNWRITTEN for the plan's own removal rows.
_FORGET_UNWRITTEN = numbered(
    f"DELETE FROM target_objects AS t USING {_KEYS} "
    "WHERE t.target = ? AND t.kind = k.kind AND t.object_id = k.object_id "
    "AND t.desired_hash IS NULL AND t.written_hash IS NULL"
)
# A delivery batch's results, one statement per kind of outcome (SQLite's _RECORD_*).
_MATCH = "t.target = ? AND t.kind = r.kind AND t.object_id = r.object_id"
_RECORD_REMOVED = numbered(
    "DELETE FROM target_objects AS t USING unnest(?::text[], ?::text[]) AS r(kind, object_id) "
    f"WHERE {_MATCH} AND t.desired_hash IS NULL"
)
# SQLite's RECORD_REMOTE_ID and RECORD_WRITTEN in one statement, so that a
# delivered row gets one new version, not two: the remote id is kept whether
# or not the hash guard lets the rest through.
_CONFIRMED = "(r.hash IS NOT NULL AND t.desired_hash IS NOT DISTINCT FROM r.hash)"
_RECORD_OK = numbered(
    "UPDATE target_objects AS t SET remote_id = COALESCE(r.remote_id, t.remote_id), "
    + ", ".join(
        f"{column} = CASE WHEN {_CONFIRMED} THEN {value} ELSE t.{column} END"
        for column, value in (
            ("written_hash", "t.desired_hash"),
            ("written", "t.desired"),
            ("dirty", "FALSE"),
            ("attempts", "0"),
            ("last_error", "NULL"),
            ("next_attempt_at", "0"),
            ("updated_at", "?::double precision"),
        )
    )
    + " FROM unnest(?::text[], ?::text[], ?::text[], ?::text[]) "
    "AS r(kind, object_id, remote_id, hash) "
    f"WHERE {_MATCH} AND (r.remote_id IS NOT NULL OR {_CONFIRMED})"
)
_RECORD_FAILED = numbered(
    "UPDATE target_objects AS t SET remote_id = COALESCE(r.remote_id, t.remote_id), "
    "attempts = t.attempts + 1, last_error = r.error, next_attempt_at = r.next_attempt_at, "
    "updated_at = ? FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], "
    "?::double precision[]) AS r(kind, object_id, remote_id, error, next_attempt_at) "
    f"WHERE {_MATCH}"
)
_IN_KEYS = "(kind, object_id) IN (SELECT * FROM unnest(?::text[], ?::text[]))"
_RECORDS = numbered(
    f"SELECT kind, object_id, data FROM directory_objects WHERE {_IN_KEYS}"
)
_ROWS = numbered(f"{sql.ROWS} WHERE target = ? AND {_IN_KEYS}")
_APPROVE = numbered(f"{sql.APPROVE} RETURNING keys")
_APPROVE_KEYS = numbered(f"{sql.APPROVE_KEYS} RETURNING keys")
_INSERT_LOG = numbered(
    f"INSERT INTO provisioning_log ({sql.LOG_COLUMNS}) SELECT * FROM unnest("
    "?::double precision[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], "
    "?::text[], ?::text[], ?::text[], ?::integer[], ?::text[], ?::text[])"
)

# Leases: every time is the server's clock (clock_timestamp(), read once per
# statement), never a replica's, so replicas' clocks may disagree.
_NOW = "extract(epoch FROM clock_timestamp())::double precision"
_LEASE_ROW = "name, holder, term, acquired_at, renewed_at, expires_at"
#: Take a free (or expired) lease with the next term, or renew our live one (same
#: term); a live lease of another holder: no row. One statement: two replicas
#: racing serialise on the row, and the second then sees the first's lease. The
#: conflict branch reads the clock again: it may have waited for the row's lock
#: (a fenced write in flight), and decides by the time it got it.
_ACQUIRE_LEASE = numbered(
    f"INSERT INTO leases AS l ({_LEASE_ROW}) "
    f"SELECT ?, ?, 1, n.t, n.t, n.t + ? FROM (SELECT {_NOW} AS t) AS n "
    "ON CONFLICT (name) DO UPDATE SET "
    "holder = excluded.holder, "
    f"term = CASE WHEN l.holder = excluded.holder AND l.expires_at > {_NOW} "
    "THEN l.term ELSE l.term + 1 END, "
    f"acquired_at = CASE WHEN l.holder = excluded.holder AND l.expires_at > {_NOW} "
    f"THEN l.acquired_at ELSE {_NOW} END, "
    f"renewed_at = {_NOW}, "
    f"expires_at = {_NOW} + (excluded.expires_at - excluded.renewed_at) "
    f"WHERE l.holder = excluded.holder OR l.expires_at <= {_NOW} "
    f"RETURNING {_LEASE_ROW}, l.expires_at - l.renewed_at AS expires_in"
)
_RELEASE_LEASE = numbered(
    f"UPDATE leases SET expires_at = n.t FROM (SELECT {_NOW} AS t) AS n "
    "WHERE name = ? AND holder = ? AND term = ? AND expires_at > n.t"
)
_LEASES = f"SELECT {_LEASE_ROW}, expires_at - {_NOW} FROM leases ORDER BY name"
#: Read inside a fenced write, locking the row: an acquire by another replica
#: (an UPDATE of it) waits until the write has committed, and a write after it
#: sees the new holder.
_FENCE = numbered(
    f"SELECT {_LEASE_ROW}, expires_at - {_NOW} FROM leases "
    "WHERE name = ? FOR SHARE"
)

# Errors that mean the database cannot be reached (rather than a bad statement).
_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # A pooled connection the server closed while it was idle (a shutdown):
    # asyncpg's next statement on it fails with "cannot switch to state ...".
    # Or the server's FATAL message (shutting down, or the session terminated)
    # read between two statements of a transaction, before the socket closed:
    # the connection waits for a reply that never comes, and the next
    # statement is refused with "another operation is in progress".
    asyncpg.InternalClientError,
)
# Errors after which a write transaction can simply run again.
_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_ATTEMPTS = 5
# Fewer rows written than this never refresh the statistics (PostgresStore._wrote).
_ANALYZE_AFTER = 5000

_P = ParamSpec("_P")
_T = TypeVar("_T")
Connection = Any  # asyncpg's Connection (or the pool's proxy of one); asyncpg has no types

_Method = Callable[Concatenate["PostgresStore", Connection, _P], Awaitable[_T]]
_Public = Callable[Concatenate["PostgresStore", _P], Coroutine[Any, Any, _T]]


def _writes(method: _Method[_P, _T]) -> _Public[_P, _T]:
    """Run a write method in one transaction, passing it the connection; retried on deadlock."""

    @functools.wraps(method)
    async def write(self: PostgresStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        attempt = 1
        while True:
            try:
                async with self._transaction() as db:
                    return await method(self, db, *args, **kwargs)
            except _RETRY:
                if attempt == _ATTEMPTS:
                    raise
            attempt += 1
            await anyio.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311

    return write


def _reads(method: _Method[_P, _T]) -> _Public[_P, _T]:
    """Run a read of several statements in one read-only snapshot."""

    @functools.wraps(method)
    async def read(self: PostgresStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as db:
            return await method(self, db, *args, **kwargs)

    return read


def _reads_one(method: _Method[_P, _T]) -> _Public[_P, _T]:
    """Run a read of ONE statement: outside a transaction it is its own snapshot."""

    @functools.wraps(method)
    async def read(self: PostgresStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._connection() as db:
            return await method(self, db, *args, **kwargs)

    return read


def tls_option(mode: SslMode, root_cert: Path | None) -> bool | str | ssl.SSLContext:
    """asyncpg's ``ssl`` argument for libpq's ``sslmode`` (and ``sslrootcert``).

    ``require`` encrypts without checking the certificate unless a root
    certificate is given (then it checks the chain, as libpq does);
    ``verify-ca`` checks the chain, ``verify-full`` the host name too. The
    system's CAs are used when no root certificate is given. Raises
    ``OSError`` or ``ssl.SSLError`` for an unreadable root certificate.
    """
    if mode == "disable":
        return False
    if mode == "prefer":
        return "prefer"
    cafile = None if root_cert is None else str(root_cert)
    context = ssl.create_default_context(cafile=cafile)
    if mode == "verify-full":
        return context
    context.check_hostname = False
    if mode == "require" and root_cert is None:
        context.verify_mode = ssl.CERT_NONE
    return context


def dsn_location(dsn: str) -> str:
    """``host:port/database`` of a ``postgresql://`` URL, for messages (never its password)."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qs(parts.query)
    hosts = query.get("host", [parts.netloc.rpartition("@")[2]])[0] or "localhost"
    port = query.get("port", [""])[0]
    named = []
    for host in hosts.split(","):
        if port or not host.rpartition("]")[2].count(":"):
            host = f"{host}:{port or 5432}"
        named.append(host)
    user = urllib.parse.unquote(parts.username or "")
    database = urllib.parse.unquote(parts.path.lstrip("/")) or query.get("dbname", [user])[0]
    return f"{','.join(named)}/{database}"


def dsn_passwords(dsn: str) -> list[str]:
    """The password a URL holds, as written and decoded (to redact both)."""
    parts = urllib.parse.urlsplit(dsn)
    found = [parts.password or "", *urllib.parse.parse_qs(parts.query).get("password", [])]
    return sorted({v for p in found if p for v in (p, urllib.parse.unquote(p))})


def _cause(exc: BaseException, timeout: float) -> str:
    """What went wrong connecting, in words (asyncpg's messages hold no password)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS failed: the server's certificate did not verify ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (state.postgresql.connect_timeout)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.args[0] if exc.args else exc) or type(exc).__name__
    if isinstance(exc, asyncpg.InternalClientError):
        return f"the connection broke off ({exc})"
    return str(exc) or type(exc).__name__


async def _backend_pid(db: Connection) -> int:
    """The server process id behind ``db``, read without a prepared statement.

    A statement asyncpg prepared on one server session is gone from the next
    one a pooler hands out: COPY goes as one simple query instead.
    """
    out = bytearray()

    async def keep(chunk: bytes) -> None:
        out.extend(chunk)

    await db.copy_from_query("SELECT pg_backend_pid()", output=keep)
    return int(out)


class _ErrorOnly(logging.Filter):
    """The error, not the stack trace, of what asyncpg's pool logs itself.

    While PostgreSQL is down or restarting, the pool tries to open its
    minimum of connections again and logs each failure with a traceback; the
    error's one line says all there is to say (the store's callers get
    :class:`StoreUnavailable`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_ErrorOnly())


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that knows whether it was closed on purpose or lost.

    The pool closes connections itself (idle too long, too many queries, the
    pool closing), and so does the store after a failed rollback; the server
    ending one (or the network losing it) goes through neither method.
    """

    closed_on_purpose = False

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's)
        self.closed_on_purpose = True
        await super().close(timeout=timeout)

    def terminate(self) -> None:
        self.closed_on_purpose = True
        super().terminate()


@timed
class PostgresStore:
    """:class:`daemon.store.Store` on a PostgreSQL database, through an asyncpg pool.

    ``password`` may be a callable (a :class:`daemon.secrets.SecretFile`'s
    ``value``): each new connection asks it, so a rotated password file needs
    no restart. A method calls only the underscored helpers, never another
    public method: each public method is one transaction.
    """

    def __init__(
        self,
        dsn: str,
        *,
        password: str | Callable[[], str] | None = None,
        ssl: bool | str | ssl.SSLContext = "prefer",
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        application_name: str = "provisiond",
        transaction_pooler: bool = False,
    ) -> None:
        self.dsn = dsn
        self.where = dsn_location(dsn)
        self._password = password
        self._ssl = ssl
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.transaction_pooler = transaction_pooler
        # Behind a transaction pooler the session settings go with each transaction.
        pairs = _SESSION_SETTINGS.items() if transaction_pooler else ()
        self._begin_suffix = "".join(f"; SET LOCAL {name} = '{value}'" for name, value in pairs)
        self._pool: asyncpg.Pool | None = None
        self._since_analyze = 0  # rows written since the statistics were last refreshed
        self._hidden = dsn_passwords(dsn)
        #: A connection was lost while idle in the pool, and no call has said so yet.
        self._lost = False

    def _scrub(self, text: str) -> str:
        for value in self._hidden:
            text = text.replace(value, "[REDACTED]")
        if isinstance(self._password, str) and self._password:
            text = text.replace(self._password, "[REDACTED]")
        return text

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StateError("the state store is not open")
        return self._pool

    async def open(self) -> None:
        settings = {"application_name": self.application_name}
        pooled: dict[str, Any] = {}
        if self.transaction_pooler:
            # A pooler refuses startup parameters it does not know (PgBouncer:
            # unless ignore_startup_parameters lists them), and a server session
            # serves other clients between transactions: no named prepared
            # statements, and the settings go with each transaction (_transaction).
            pooled["statement_cache_size"] = 0
        else:
            settings |= _SESSION_SETTINGS
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                password=self._password,
                ssl=self._ssl,
                timeout=self.connect_timeout,
                connection_class=_Connection,
                init=self._watch,
                server_settings=settings,
                **pooled,
            )
            # Before the migrations: behind an undeclared transaction pooler
            # their prepared statements may fail in ways that do not say why,
            # and a refused database is better left unchanged.
            await self._refuse_undeclared_pooler()
            await self._migrate()
            await self._fill_logins()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            if isinstance(exc, StoreUnavailable) and isinstance(exc.__cause__, _LOST):
                exc = exc.__cause__
            if isinstance(exc, StateError):
                raise
            if isinstance(exc, (*_LOST, asyncpg.PostgresError, asyncpg.InterfaceError)):
                cause = self._scrub(_cause(exc, self.connect_timeout))
                if "unsupported startup parameter" in cause and not self.transaction_pooler:
                    # PgBouncer's answer to jit and idle_in_transaction_session_timeout
                    cause += (
                        "; behind a transaction pooler set state.postgresql.transaction_pooler:"
                        " true (behind a session pooler, let it ignore jit and"
                        " idle_in_transaction_session_timeout)"
                    )
                raise StateError(f"cannot use PostgreSQL at {self.where}: {cause}") from None
            raise

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                with anyio.fail_after(self.connect_timeout):
                    await pool.close()
            except Exception:
                pool.terminate()  # a connection that would not close in time
            except BaseException:
                pool.terminate()
                raise

    async def _watch(self, db: Connection) -> None:
        db.add_termination_listener(self._ended)

    def _ended(self, db: Connection) -> None:
        """A connection of the pool closed: note it if the server ended it while it was idle.

        One closed on purpose (by the pool, or after a failed rollback) is no
        news, and one in use (a pool proxy) failed its caller's statement
        already. One lost while idle in the pool (``pg_terminate_backend``, a
        server restart) would be replaced silently by the next call:
        :meth:`_connection` reports it instead.
        """
        if isinstance(db, asyncpg.pool.PoolConnectionProxy) or db.closed_on_purpose:
            return
        if self._pool is not None:
            self._lost = True

    # -- transactions ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection from the pool; a lost database is a :class:`StoreUnavailable`.

        So is a connection the server ended while it sat idle in the pool:
        the next call fails once (and the pool opens a new connection for
        the one after), so that a caller whose session the server ended
        always hears of it. A lease holder's renewal fails, and it steps down.
        """
        if self._lost:
            self._lost = False
            raise StoreUnavailable(
                f"PostgreSQL at {self.where}: the server closed a connection of this store "
                "(terminated by an administrator, or restarted)"
            )
        try:
            async with self.pool.acquire() as db:
                yield db
        except _LOST as exc:
            cause = self._scrub(_cause(exc, self.connect_timeout))
            raise StoreUnavailable(f"PostgreSQL at {self.where}: {cause}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str = "BEGIN") -> AsyncIterator[Connection]:
        async with self._connection() as db:
            # Shielded like the end: a BEGIN that ran but whose caller was
            # cancelled would leave a transaction open that nobody ends.
            with anyio.CancelScope(shield=True):
                # One simple query, one round trip, with the SET LOCALs if any.
                await db.execute(begin + self._begin_suffix)
            try:
                yield db
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._rollback(db)
                raise
            with anyio.CancelScope(shield=True):
                try:
                    await db.execute("COMMIT")
                except BaseException:
                    await self._rollback(db)
                    raise

    async def _rollback(self, db: Connection) -> None:
        # After a cancelled statement asyncpg first waits for the server to
        # confirm the cancellation; a connection that cannot roll back is
        # closed, and the server rolls back what it had.
        # A connection the server already ended (terminated, or idle in the
        # transaction too long) is gone from the pool: nothing is left to roll back,
        # and the error that ended the transaction is the one to report.
        try:
            open_transaction = db.is_in_transaction()
        except asyncpg.InterfaceError:
            return  # released: the connection was lost
        try:
            with anyio.fail_after(self.connect_timeout):
                if open_transaction:
                    await db.execute("ROLLBACK")
        except Exception:
            with contextlib.suppress(asyncpg.InterfaceError):
                db.terminate()

    # -- transaction poolers ----------------------------------------------------------------

    async def _pooler_evidence(self) -> str | None:
        """What shows that this pool's connections share server sessions, if anything does.

        Connection X reads its server process id, connection Y begins a
        transaction, reads its own and holds it, X reads its own again. A
        direct connection or a session pooler keeps one server session per
        connection throughout; a transaction pooler hands X's session to Y's
        transaction (X's first id is Y's), or X's next statement to another
        session (X's id changes). Needs two connections: ``None`` when the
        pool has one, as when nothing is detected.
        """
        if self.pool_size < 2:
            return None
        async with self._connection() as x, self._connection() as y:
            try:
                for _ in range(3):  # a pooler that happened to keep X's session: look again
                    before = await _backend_pid(x)
                    async with y.transaction():
                        held = await _backend_pid(y)
                        after = await _backend_pid(x)
                    if held == before:
                        return (
                            f"a transaction on one connection ran in the server session "
                            f"(pid {held}) another connection had just used"
                        )
                    if after != before:
                        return (
                            f"two statements on one connection ran in different server "
                            f"sessions (pids {before} and {after})"
                        )
                return None
            finally:
                # The pool opens connections as calls need them: leave it with one.
                with anyio.CancelScope(shield=True):
                    try:
                        await y.close(timeout=self.connect_timeout)
                    except Exception:
                        y.terminate()

    async def _refuse_undeclared_pooler(self) -> None:
        if self.transaction_pooler:
            return  # declared: whatever is found is expected
        evidence = await self._pooler_evidence()
        if evidence is not None:
            raise StateError(
                f"state database PostgreSQL at {self.where} is reached through a "
                f"transaction pooler (such as PgBouncer in pool_mode = transaction): "
                f"{evidence}; set state.postgresql.transaction_pooler: true, "
                "or use session pooling"
            )

    # -- schema -----------------------------------------------------------------------------

    async def _migrate(self) -> None:
        expected = len(MIGRATIONS)
        while True:
            # Under the lock, in the transaction that upgrades it: a replica
            # opening the same new database at once waits, then sees it.
            async with self._transaction() as db:
                await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                current = await self._schema_version(db)
                if current is None:
                    await db.execute(SCHEMA_VERSION_TABLE)
                    current = 0
                if current > expected:
                    raise StateError(
                        f"state database PostgreSQL at {self.where} is at schema version "
                        f"{current}, but this provisiond expects schema version {expected}: "
                        "it was written by a newer provisiond; upgrade provisiond"
                    )
                if current == expected:
                    return
                await db.execute(MIGRATIONS[current])
                await db.execute("INSERT INTO schema_version (version) VALUES ($1)", current + 1)

    @staticmethod
    async def _schema_version(db: Connection) -> int | None:
        if await db.fetchval("SELECT to_regclass('schema_version')") is None:
            return None
        return int(await db.fetchval("SELECT COALESCE(max(version), 0) FROM schema_version"))

    async def _fill_logins(self) -> None:
        """Fold the sign-in names of users stored before migration 2 added their columns."""
        async with self._connection() as db:
            if await db.fetchval(f"SELECT 1 {sql.MISSING_LOGINS} LIMIT 1") is None:
                return
        async with self._transaction() as db:
            found = await db.fetch(f"SELECT object_id, data {sql.MISSING_LOGINS} FOR UPDATE")
            rows = [(*logins(decode("user", r["data"])), r["object_id"]) for r in found]
            await db.executemany(numbered(sql.FILL_LOGINS), rows)

    @_reads
    async def check(self, db: Connection) -> list[str]:
        version = await db.fetchval("SHOW server_version")
        schema = await self._schema_version(db)
        tls = await db.fetchval(
            "SELECT CASE WHEN ssl THEN version ELSE NULL END FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()"
        )
        return [
            f"state store PostgreSQL {version} at {self.where} reached "
            f"({tls or 'no TLS'}, pool of up to {self.pool_size} connections"
            f"{', through a transaction pooler' if self.transaction_pooler else ''})",
            f"state store schema version {schema} (this provisiond: {len(MIGRATIONS)})",
        ]

    # -- meta -------------------------------------------------------------------------------

    @_reads_one
    async def get_meta(self, db: Connection, key: str) -> str | None:
        value: str | None = await db.fetchval(numbered(sql.GET_META), key)
        return value

    @_writes
    async def set_meta(
        self, db: Connection, key: str, value: str, *, fence: Fence | None = None
    ) -> None:
        await self._check_fence(db, fence)
        await db.execute(numbered(sql.SET_META), key, value)

    # -- the committed snapshot ---------------------------------------------------------------

    @_reads
    async def committed(self, db: Connection) -> Committed:
        version = await db.fetchval(numbered(sql.GET_META), "snapshot_version")
        hashes: dict[Key, str] = {}
        async for kind, object_id, h in _stream(db, sql.COMMITTED_HASHES):
            hashes[(kind_of(kind), object_id)] = h
        return Committed(version, hashes)

    @_reads_one
    async def records(self, db: Connection, keys: list[Key]) -> dict[Key, DirectoryObject]:
        if not keys:
            return {}
        out: dict[Key, DirectoryObject] = {}
        for kind, object_id, data in await db.fetch(_RECORDS, *_columns(keys, 2)):
            obj = load(kind, data)
            assert obj is not None
            out[(kind_of(kind), object_id)] = obj
        return out

    @_reads_one
    async def groups(self, db: Connection) -> list[Group]:
        return [msgspec_group(r[0]) for r in await db.fetch(numbered(sql.GROUPS))]

    @_reads_one
    async def find_user(self, db: Connection, login: str) -> User | None:
        folded = login.strip().casefold()
        data = await db.fetchval(numbered(sql.FIND_USER), folded, folded, folded)
        if data is None:
            return None
        user = decode("user", data)
        assert isinstance(user, User)
        return user

    @_reads_one
    async def granted(self, db: Connection, target: str, user_id: str) -> bool:
        return bool(await db.fetchval(numbered(sql.GRANTED), target, user_id))

    @_reads
    async def target_index(self, db: Connection, target: str) -> TargetIndex:
        index = TargetIndex()
        async for kind, object_id, desired_hash, active in _stream(
            db, numbered(sql.TARGET_INDEX), target
        ):
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
        await self._commit(version, upserts, deletes, plans, fence=fence, log=log)
        await self._wrote(len(upserts) + sum(len(p.desired) for p in plans.values()))

    async def _wrote(self, rows: int) -> None:
        """Refresh the planner's statistics once this store changed half the rows they know of.

        Until autovacuum gets to it (a minute or more), the planner would take
        a table just filled by a first sync for a small one, and read all of
        it for each delivery batch instead of looking rows up; and once the
        sync is delivered it would still think every row dirty, and count
        them through every dead row version. Only statistics: not part of any
        write, and a failure here is no failure of the write.
        """
        self._since_analyze += rows
        if self._since_analyze < _ANALYZE_AFTER:
            return
        tables = ("directory_objects", "target_objects")
        try:
            async with self._connection() as db:
                known = await db.fetchval(
                    "SELECT sum(greatest(reltuples, 0)) FROM pg_class "
                    "WHERE oid = ANY($1::regclass[])",
                    list(tables),
                )
                if self._since_analyze > float(known or 0) / 2:
                    self._since_analyze = 0
                    await db.execute(f"ANALYZE {', '.join(tables)}")
        except (StoreUnavailable, asyncpg.PostgresError):
            return

    @_writes
    async def _commit(
        self,
        db: Connection,
        version: str,
        upserts: list[tuple[Key, str, DirectoryObject]],
        deletes: list[Key],
        plans: dict[str, TargetPlan],
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        await self._check_fence(db, fence)
        now = time.time()
        # In one order (target, then key) everywhere, so that two writers
        # lock rows in the same order and rarely deadlock.
        for target in sorted(plans):
            await self._write_plan(db, target, plans[target], now)
        records = sorted(_last_wins((k, (h, obj)) for k, h, obj in upserts).items())
        for chunk in _chunks(records):
            rows = [(k[0], k[1], h, encode(obj).decode(), *logins(obj)) for k, (h, obj) in chunk]
            await db.execute(_UPSERT_DIRECTORY, *_columns(rows, 6))
        for gone in _chunks(sorted(set(deletes))):
            await db.execute(_DELETE_DIRECTORY, *_columns(gone, 2))
        await db.execute(numbered(sql.SET_META), "snapshot_version", version)
        await db.execute(numbered(sql.SET_META), "snapshot_committed_at", repr(now))
        await _write_log(db, log)

    async def _write_plan(self, db: Connection, target: str, plan: TargetPlan, now: float) -> None:
        desired = sorted(_last_wins((row.key, row) for row in plan.desired).items())
        for chunk in _chunks(desired):
            rows = [
                (k[0], k[1], row.hash, dump(row.obj), row.active, phase(k[0], row.obj is None))
                for k, row in chunk
            ]
            await db.execute(_UPSERT_PLAN, target, now, *_columns(rows, 6))
        for released in _chunks(sorted(set(plan.released))):
            await db.execute(_RELEASE["target_objects"], *_columns(released, 2), target)
            # A released object is no longer managed: the target forgets its link too.
            await db.execute(_RELEASE["target_links"], *_columns(released, 2), target)
        # Only this plan's removals can be unwritten removals (each commit forgets
        # them), so look at those rows, not at every row of the target.
        for removals in _chunks([key for key, row in desired if row.hash is None]):
            await db.execute(_FORGET_UNWRITTEN, *_columns(removals, 2), target)
        if plan.hold is None:
            await db.execute(numbered(sql.DELETE_HOLD), target)
        else:
            await db.execute(numbered(sql.SET_HOLD), target, hold_keys(plan.hold), now)
        for settled in sorted(plan.settled, key=lambda d: d.key):
            statement = sql.KEEP_DECISION if settled.keep else sql.DROP_DECISION
            await db.execute(numbered(statement), target, *settled.key, settled.decided_at)

    # -- deliveries ---------------------------------------------------------------------------

    @_reads_one
    async def due(self, db: Connection, target: str, now: float, limit: int) -> list[DueRow]:
        return [_due_row(r) for r in await db.fetch(numbered(sql.DUE), target, now, limit)]

    @_reads
    async def rows(self, db: Connection, target: str, keys: list[Key] | None) -> dict[Key, DueRow]:
        if keys is None:
            found = _stream(db, numbered(sql.DIRTY_ROWS), target)
        elif not keys:
            return {}
        else:
            found = _stream(db, _ROWS, target, *_columns(keys, 2))
        out: dict[Key, DueRow] = {}
        async for found_row in found:
            row = _due_row(found_row)
            out[row.key] = row
        return out

    async def record(
        self,
        target: str,
        results: list[Result],
        now: float,
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        await self._record(target, results, now, fence=fence, log=log)
        await self._wrote(len(results))

    @_writes
    async def _record(
        self,
        db: Connection,
        target: str,
        results: list[Result],
        now: float,
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        await self._check_fence(db, fence)
        await _write_log(db, log)
        # One result per object, the last given (one statement changes a row once).
        results = [r for _, r in sorted(_last_wins((r.key, r) for r in results).items())]
        ok = [r for r in results if r.ok]
        failed = [r for r in results if not r.ok]
        removed = [r.key for r in ok if r.delivered_hash is None]
        if removed:
            await db.execute(_RECORD_REMOVED, *_columns(removed, 2), target)
        confirmed = [
            (*r.key, r.remote_id, r.delivered_hash)
            for r in ok
            if r.remote_id is not None or r.delivered_hash is not None
        ]
        if confirmed:
            await db.execute(_RECORD_OK, now, *_columns(confirmed, 4), target)
        if failed:
            rows = [(*r.key, r.remote_id, r.error, r.next_attempt_at) for r in failed]
            await db.execute(_RECORD_FAILED, now, *_columns(rows, 5), target)

    @_reads_one
    async def target_object(self, db: Connection, target: str, key: Key) -> TargetObject | None:
        row = await db.fetchrow(numbered(sql.TARGET_OBJECT), target, *key)
        return None if row is None else target_object_of(row)

    @_reads_one
    async def counts(self, db: Connection, target: str) -> tuple[int, int]:
        dirty, failed = await db.fetchrow(numbered(sql.COUNTS), target)
        return int(dirty), int(failed)

    @_reads_one
    async def problems(self, db: Connection, target: str, limit: int) -> list[ObjectStatus]:
        return [
            ObjectStatus((kind_of(kind), object_id), "failed", attempts, last_error, nxt)
            for kind, object_id, attempts, last_error, nxt in await db.fetch(
                numbered(sql.PROBLEMS), target, limit
            )
        ]

    # -- the mass-removal guard ---------------------------------------------------------------

    @_reads_one
    async def hold(self, db: Connection, target: str) -> Hold | None:
        row = await db.fetchrow(numbered(sql.HOLD), target)
        return None if row is None else read_hold(target, *row)

    @_reads_one
    async def approved_holds(self, db: Connection) -> list[str]:
        return [str(r[0]) for r in await db.fetch(sql.APPROVED_HOLDS)]

    @_writes
    async def approve(
        self, db: Connection, target: str, keys: frozenset[Key] | None = None
    ) -> int:
        # One statement: the count returned is that of the hold approved. Given keys,
        # a cycle's commit of other keys meanwhile makes it approve nothing (the
        # statement re-reads the row the commit wrote).
        if keys is None:
            stored = await db.fetchval(_APPROVE, target)
        else:
            stored = await db.fetchval(_APPROVE_KEYS, target, hold_keys(keys))
        return 0 if stored is None else len(json.loads(stored))

    @_writes
    async def retry_now(self, db: Connection, target: str, keys: Sequence[Key], now: float) -> int:
        changed = 0
        for kind, object_id in keys:
            status = await db.execute(numbered(sql.RETRY_NOW), now, target, kind, object_id)
            changed += int(status.rsplit(" ", 1)[-1])
        return changed

    @_reads_one
    async def search_users(self, db: Connection, text: str, limit: int) -> list[User]:
        pattern = sql.like_pattern(text)
        out: list[User] = []
        for (data,) in await db.fetch(numbered(sql.SEARCH_USERS), pattern, pattern, pattern, limit):
            user = decode("user", data)
            assert isinstance(user, User)
            out.append(user)
        return out

    @_writes
    async def decide(
        self, db: Connection, target: str, keys: Sequence[Key], decision: str, actor: str,
        at: float,
    ) -> list[Key]:  # fmt: skip
        # The hold's row locked first: a cycle replacing the hold meanwhile waits, or
        # has committed and this reads its new keys.
        row = await db.fetchrow(numbered(f"{sql.HOLD} FOR UPDATE"), target)
        known = set() if row is None else set(read_hold(target, *row).keys)
        known.update(decision_of(r).key for r in await db.fetch(numbered(sql.DECISIONS), target))
        decided = sorted(k for k in set(keys) if k in known)
        for key in decided:
            directory_hash = await db.fetchval(numbered(sql.DIRECTORY_HASH), *key)
            await db.execute(
                numbered(sql.PUT_DECISION), target, *key, decision, actor, at, directory_hash
            )
        await _write_log(db, [LogEntry(at, target, k, decision, actor=actor) for k in decided])
        return decided

    @_reads_one
    async def decisions(self, db: Connection, target: str) -> dict[Key, Decision]:
        rows = await db.fetch(numbered(sql.DECISIONS), target)
        return {d.key: d for d in map(decision_of, rows)}

    # -- the provisioning log -------------------------------------------------------------------

    @_reads_one
    async def log_entries(
        self,
        db: Connection,
        *,
        target: str | None = None,
        key: Key | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[LogEntry]:
        filters, values = log_where(target, key, before)
        rows = await db.fetch(numbered(sql.log_query(filters)), *values, limit)
        return [log_entry_of(r) for r in rows]

    @_writes
    async def purge_log(self, db: Connection, before: float, limit: int) -> int:
        done: str = await db.execute(numbered(sql.PURGE_LOG), before, limit)
        return int(done.rsplit(" ", 1)[-1])

    # -- what targets remember ----------------------------------------------------------------

    @_reads
    async def target_links(self, db: Connection, target: str) -> TargetLinks:
        links = {
            (kind_of(kind), object_id): Link(remote_id, json.loads(body))
            for kind, object_id, remote_id, body in await db.fetch(numbered(sql.LINKS), target)
        }
        deactivations = {
            object_id: Deactivation(remote_id, float(at))
            for object_id, remote_id, at in await db.fetch(numbered(sql.DEACTIVATIONS), target)
        }
        return TargetLinks(links, deactivations)

    async def save_links(
        self, target: str, changes: LinkChanges, *, fence: Fence | None = None
    ) -> None:
        if changes:
            await self._save_links(target, changes, fence)

    @_writes
    async def _save_links(
        self, db: Connection, target: str, changes: LinkChanges, fence: Fence | None
    ) -> None:
        await self._check_fence(db, fence)
        links = sorted(changes.links.items())
        deactivations = sorted(changes.deactivations.items())
        statements: list[tuple[str, list[tuple[Any, ...]]]] = [
            (
                sql.UPSERT_LINK,
                [
                    (target, k[0], k[1], v.remote_id, json.dumps(v.body))
                    for k, v in links
                    if v is not None
                ],
            ),
            (sql.DELETE_LINK, [(target, k[0], k[1]) for k, v in links if v is None]),
            (
                sql.UPSERT_DEACTIVATION,
                [(target, oid, d.remote_id, d.at) for oid, d in deactivations if d is not None],
            ),
            (sql.DELETE_DEACTIVATION, [(target, oid) for oid, d in deactivations if d is None]),
            (sql.SET_TARGET_META, [(target, k, v) for k, v in sorted(changes.meta.items())]),
        ]
        for statement, args in statements:
            if args:
                await db.executemany(numbered(statement), args)

    @_reads_one
    async def target_meta(self, db: Connection, target: str, key: str) -> str | None:
        value: str | None = await db.fetchval(numbered(sql.TARGET_META), target, key)
        return value

    @_writes
    async def set_target_meta(
        self, db: Connection, target: str, key: str, value: str, *, fence: Fence | None = None
    ) -> None:
        await self._check_fence(db, fence)
        await db.execute(numbered(sql.SET_TARGET_META), target, key, value)

    # -- leases ---------------------------------------------------------------------------------

    @_writes
    async def acquire_lease(
        self, db: Connection, name: str, holder: str, seconds: float
    ) -> Lease | None:
        row = await db.fetchrow(_ACQUIRE_LEASE, name, holder, seconds)
        return None if row is None else _lease(row)

    @_writes
    async def release_lease(self, db: Connection, name: str, holder: str, term: int) -> None:
        await db.execute(_RELEASE_LEASE, name, holder, term)

    @_reads_one
    async def leases(self, db: Connection) -> list[Lease]:
        return [_lease(row) for row in await db.fetch(_LEASES)]

    @staticmethod
    async def _check_fence(db: Connection, fence: Fence | None) -> None:
        """First in a write transaction: :class:`FencedOut` unless ``fence`` still holds."""
        if fence is None:
            return
        row = await db.fetchrow(_FENCE, fence.lease)
        check_fence(fence, None if row is None else _lease(row))


    # -- sign-in state every replica shares -------------------------------------------------
    # READ COMMITTED, as every write: what must be atomic is one statement
    # (a claim's upsert, a take's DELETE ... RETURNING), or rows that add up.

    @_writes
    async def init_meta(self, db: Connection, key: str, value: str) -> str:
        # A racing insert makes this one wait, then do nothing; the SELECT,
        # a new snapshot, sees whichever was committed first.
        await db.execute(numbered(sql.INIT_META), key, value)
        stored: str = await db.fetchval(numbered(sql.GET_META), key)
        return stored

    @_writes
    async def claim(
        self, db: Connection, key: str, expires_at: float, now: float, limit: int
    ) -> bool:
        await db.execute(numbered(sql.DELETE_EXPIRED["claims"]), now)
        if await db.fetchval(numbered(sql.CLAIM_HELD), key, now) is not None:
            return False
        if await db.fetchval(sql.COUNT_ROWS["claims"]) >= limit:
            raise StoreFull("claims")
        return await db.fetchval(numbered(sql.CLAIM), key, expires_at, now) is not None

    @_writes
    async def park(
        self,
        db: Connection,
        handle: str,
        value: str,
        parked_at: float,
        expires_at: float,
        now: float,
        limit: int,
    ) -> None:
        await db.execute(numbered(sql.DELETE_EXPIRED["parked"]), now)
        if await db.fetchval(sql.COUNT_ROWS["parked"]) >= limit:
            raise StoreFull("parked")
        await db.execute(numbered(sql.PARK), handle, value, parked_at, expires_at)

    @_writes
    async def take_parked(self, db: Connection, handle: str, now: float) -> ParkedValue | None:
        row = await db.fetchrow(numbered(sql.TAKE_PARKED), handle)
        if row is None or float(row[2]) <= now:
            return None
        return ParkedValue(str(row[0]), float(row[1]), float(row[2]))

    @_reads_one
    async def count_failures(self, db: Connection, key: str, since: float) -> int:
        return int(await db.fetchval(numbered(sql.COUNT_FAILURES), key, since))

    @_writes
    async def add_failures(
        self, db: Connection, keys: Sequence[str], at: float, expires_at: float
    ) -> None:
        await db.executemany(numbered(sql.DELETE_EXPIRED_FAILURES_OF), [(k, at) for k in keys])
        await db.executemany(numbered(sql.ADD_FAILURE), [(k, at, expires_at) for k in keys])

    @_writes
    async def clear_failures(self, db: Connection, key: str) -> None:
        await db.execute(numbered(sql.CLEAR_FAILURES), key)

    @_reads_one
    async def get_session(self, db: Connection, session_id: str) -> SessionRecord | None:
        row = await db.fetchrow(numbered(sql.GET_SESSION), session_id)
        if row is None:
            return None
        sid, index, user_id, data, last_seen, expires_at = row
        return SessionRecord(sid, index, user_id, data, float(last_seen), float(expires_at))

    @_writes
    async def put_session(
        self, db: Connection, record: SessionRecord, now: float, per_user: int
    ) -> None:
        r = record
        await db.execute(numbered(sql.DELETE_EXPIRED["sessions"]), now)
        await db.execute(
            numbered(sql.PUT_SESSION),
            r.id,
            r.session_index,
            r.user_id,
            r.data,
            r.last_seen,
            r.expires_at,
        )
        await db.execute(numbered(sql.TRIM_SESSIONS), r.user_id, r.user_id, per_user)

    @_writes
    async def touch_session(
        self, db: Connection, session_id: str, last_seen: float, expires_at: float
    ) -> bool:
        status = await db.execute(numbered(sql.TOUCH_SESSION), last_seen, expires_at, session_id)
        return _affected(status) == 1

    @_writes
    async def delete_session(self, db: Connection, session_id: str) -> None:
        await db.execute(numbered(sql.DELETE_SESSIONS["id"]), session_id)

    @_writes
    async def delete_sessions_by_index(self, db: Connection, session_index: str) -> int:
        return _affected(
            await db.execute(numbered(sql.DELETE_SESSIONS["session_index"]), session_index)
        )

    @_writes
    async def delete_user_sessions(self, db: Connection, user_id: str) -> int:
        return _affected(await db.execute(numbered(sql.DELETE_SESSIONS["user_id"]), user_id))

    @_writes
    async def purge(self, db: Connection, now: float) -> int:
        gone = 0
        for statement in sql.DELETE_EXPIRED.values():
            gone += _affected(await db.execute(numbered(statement), now))
        return gone

    # -- second factors ------------------------------------------------------------------

    @_reads_one
    async def factors(self, db: Connection, user_id: str) -> list[FactorRecord]:
        return [factor_of(row) for row in await db.fetch(numbered(sql.FACTORS), user_id)]

    @_writes
    async def put_factor(self, db: Connection, record: FactorRecord) -> None:
        await db.execute(numbered(sql.PUT_FACTOR), *factor_row(record))

    @_writes
    async def swap_factor(
        self,
        db: Connection,
        user_id: str,
        factor_id: str,
        expected_data: str,
        data: str,
        used_at: float,
    ) -> bool:
        # READ COMMITTED re-checks the WHERE on the row a racing swap left:
        # the second of two swaps from the same data matches nothing.
        status = await db.execute(
            numbered(sql.SWAP_FACTOR), data, used_at, user_id, factor_id, expected_data
        )
        return _affected(status) == 1

    @_writes
    async def delete_factor(self, db: Connection, user_id: str, factor_id: str) -> bool:
        return _affected(await db.execute(numbered(sql.DELETE_FACTOR), user_id, factor_id)) == 1

    @_writes
    async def delete_factors(self, db: Connection, user_id: str, kind: str | None = None) -> int:
        if kind is None:
            return _affected(await db.execute(numbered(sql.DELETE_FACTORS), user_id))
        return _affected(await db.execute(numbered(sql.DELETE_FACTORS_OF_KIND), user_id, kind))

    @_reads_one
    async def factor_users(self, db: Connection) -> list[tuple[str, int]]:
        rows = await db.fetch(sql.FACTOR_USERS)
        return [(str(user_id), int(count)) for user_id, count in rows]


def _affected(status: str) -> int:
    """The row count of a command status such as ``DELETE 3`` or ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _lease(row: Sequence[Any]) -> Lease:
    name, holder, term, acquired, renewed, expires, expires_in = row
    return Lease(
        name, holder, int(term), float(acquired), float(renewed), float(expires), float(expires_in)
    )


def _due_row(row: Sequence[Any]) -> DueRow:
    kind, object_id, remote_id, desired_hash, desired, written, attempts = row
    return DueRow(
        (kind_of(kind), object_id),
        remote_id,
        desired_hash,
        load(kind, desired),
        load(kind, written),
        attempts,
    )


_K = TypeVar("_K")
_V = TypeVar("_V")


def _last_wins(pairs: Iterable[tuple[_K, _V]]) -> dict[_K, _V]:
    """One entry per key, the last given: one statement may not change a row twice."""
    return dict(pairs)


#: Rows per bulk statement, and per round trip of a streamed read: a first sync
#: of 100,000 users goes as ten statements per table, and never holds all its
#: encoded rows at once.
_BATCH = 10_000


def _chunks(items: Sequence[_V]) -> Iterable[Sequence[_V]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


def _stream(db: Connection, query: str, *args: Any) -> AsyncIterator[Sequence[Any]]:
    """The rows of ``query``, fetched :data:`_BATCH` at a time (in the caller's transaction)."""
    cursor: AsyncIterator[Sequence[Any]] = db.cursor(query, *args, prefetch=_BATCH)
    return cursor


async def _write_log(db: Connection, log: Sequence[LogEntry]) -> None:
    """Append ``log`` to the provisioning log, in the caller's transaction."""
    for chunk in _chunks(log):
        await db.execute(_INSERT_LOG, *_columns([log_row(e) for e in chunk], 13))


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows turned into ``width`` column arrays, for ``unnest``."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]
