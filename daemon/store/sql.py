"""SQL that the SQLite and PostgreSQL stores share, written once.

The statements here are in the dialect both engines accept:

- placeholders are ``?``; :func:`numbered` rewrites them to PostgreSQL's
  ``$1``, ``$2``, ... in the order they appear;
- booleans are ``TRUE`` and ``FALSE`` (SQLite stores them as 1 and 0);
- the null-safe comparison is ``IS NOT DISTINCT FROM`` (SQLite 3.39 or later);
- text compares bytewise: SQLite's default, and the PostgreSQL schema
  declares its key columns ``COLLATE "C"``, so delivery order is the same.

The schemas differ in their types and stay with each backend, and so do the
bulk writes: SQLite runs one statement per row (``executemany``), PostgreSQL
sends a batch's rows as arrays (``unnest``). An upsert takes its row source
(``VALUES (?, ...)`` or ``SELECT ... FROM unnest(...)``) as an argument and
shares everything around it.
"""

from __future__ import annotations

import functools
import re

# -- meta ---------------------------------------------------------------------------

GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

# -- the committed snapshot ---------------------------------------------------------

COMMITTED_HASHES = "SELECT kind, object_id, hash FROM directory_objects"

FIND_USER = (
    "SELECT data FROM directory_objects WHERE kind = 'user' AND "
    "(login_username = ? OR login_email = ?) ORDER BY login_username = ? DESC LIMIT 1"
)

def upsert_directory(rows: str) -> str:
    """Insert or replace directory records; ``rows`` yields (kind, id, hash, data, logins)."""
    return (
        "INSERT INTO directory_objects (kind, object_id, hash, data, login_username, "
        f"login_email) {rows} "
        "ON CONFLICT (kind, object_id) DO UPDATE SET hash = excluded.hash, "
        "data = excluded.data, login_username = excluded.login_username, "
        "login_email = excluded.login_email"
    )


# -- what each target should hold ----------------------------------------------------

GRANTED = (
    "SELECT active FROM target_objects WHERE target = ? AND kind = 'user' "
    "AND object_id = ? AND desired_hash IS NOT NULL"
)

TARGET_INDEX = "SELECT kind, object_id, desired_hash, active FROM target_objects WHERE target = ?"

#: The columns of a :class:`daemon.store.DueRow`, in its order.
ROWS = (
    "SELECT kind, object_id, remote_id, desired_hash, desired, written, attempts "
    "FROM target_objects"
)
DIRTY_ROWS = f"{ROWS} WHERE target = ? AND dirty = TRUE"
GROUPS = "SELECT data FROM directory_objects WHERE kind = 'group' ORDER BY object_id"
TARGET_OBJECT = (
    "SELECT kind, object_id, remote_id, desired_hash, desired, written, attempts, active, "
    "dirty, last_error, next_attempt_at, updated_at FROM target_objects "
    "WHERE target = ? AND kind = ? AND object_id = ?"
)
DUE = f"{DIRTY_ROWS} AND next_attempt_at <= ? ORDER BY phase, kind, object_id LIMIT ?"

#: Cut a failed object's backoff short: due now (only if it is still failed).
RETRY_NOW = (
    "UPDATE target_objects SET next_attempt_at = ? WHERE target = ? AND kind = ? "
    "AND object_id = ? AND dirty = TRUE AND attempts > 0"
)

#: Users whose logins or record contain a pattern (``!`` escapes ``%`` and ``_``).
SEARCH_USERS = (
    "SELECT data FROM directory_objects WHERE kind = 'user' AND (login_username LIKE ? "
    "ESCAPE '!' OR login_email LIKE ? ESCAPE '!' OR lower(data) LIKE ? ESCAPE '!') "
    "ORDER BY login_username, object_id LIMIT ?"
)


def like_pattern(text: str) -> str:
    """``%text%`` for LIKE, casefolded, with ``!``, ``%`` and ``_`` escaped by ``!``."""
    folded = text.strip().casefold()
    return "%" + "".join("!" + c if c in "!%_" else c for c in folded) + "%"


COUNTS = (
    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0) "
    "FROM target_objects WHERE target = ? AND dirty = TRUE"
)

PROBLEMS = (
    "SELECT kind, object_id, attempts, last_error, next_attempt_at FROM target_objects "
    "WHERE target = ? AND dirty = TRUE AND attempts > 0 "
    "ORDER BY attempts DESC, kind, object_id LIMIT ?"
)

#: The columns a plan row sets, in the order :func:`upsert_plan`'s rows give them.
PLAN_COLUMNS = (
    "target, kind, object_id, desired_hash, desired, active, "
    "dirty, phase, attempts, next_attempt_at, updated_at"
)


def upsert_plan(rows: str) -> str:
    """Record desired rows (columns :data:`PLAN_COLUMNS`) and mark them dirty as needed."""
    return f"""
        INSERT INTO target_objects ({PLAN_COLUMNS})
        {rows}
        ON CONFLICT (target, kind, object_id) DO UPDATE SET
            desired_hash = excluded.desired_hash,
            desired = excluded.desired,
            active = excluded.active,
            -- After a failed attempt the application may hold a partial change (a
            -- removal that deactivated and waits to delete): what was written is no
            -- longer known, so a desired state equal to it is still delivered.
            written_hash = CASE WHEN target_objects.attempts > 0
                                 AND excluded.desired_hash IS NOT NULL
                                THEN NULL ELSE target_objects.written_hash END,
            written = CASE WHEN target_objects.attempts > 0
                            AND excluded.desired_hash IS NOT NULL
                           THEN NULL ELSE target_objects.written END,
            dirty = CASE WHEN target_objects.attempts = 0
                          AND target_objects.written_hash
                              IS NOT DISTINCT FROM excluded.desired_hash
                         THEN FALSE ELSE TRUE END,
            phase = excluded.phase,
            attempts = 0,
            last_error = NULL,
            next_attempt_at = 0,
            updated_at = excluded.updated_at
    """


#: A removal of something never confirmed written needs no delivery.
FORGET_UNWRITTEN = (
    "DELETE FROM target_objects WHERE target = ? AND desired_hash IS NULL "
    "AND written_hash IS NULL"
)

# -- the mass-removal guard ----------------------------------------------------------

HOLD = "SELECT keys, created_at, approved FROM holds WHERE target = ?"
#: Targets a cycle must plan again for: an approved hold, or a decision no plan used yet.
APPROVED_HOLDS = (
    "SELECT target FROM holds WHERE approved = TRUE "
    "UNION SELECT target FROM hold_decisions WHERE applied = FALSE ORDER BY 1"
)
APPROVE = "UPDATE holds SET approved = TRUE WHERE target = ?"
#: The whole hold approved only if it holds exactly the keys the operator saw.
APPROVE_KEYS = f"{APPROVE} AND keys = ?"
DELETE_HOLD = "DELETE FROM holds WHERE target = ?"
#: A hold replaced by the same keys keeps its age and its approval: an approval made
#: while a cycle ran (it read the hold before) is not undone by the cycle's commit. A
#: cycle that used an approval never holds those keys again, and a hold with other keys
#: needs approval again (nobody saw them).
SET_HOLD = (
    "INSERT INTO holds (target, keys, created_at, approved) VALUES (?, ?, ?, FALSE) "
    "ON CONFLICT (target) DO UPDATE SET keys = excluded.keys, "
    "approved = CASE WHEN holds.keys = excluded.keys THEN holds.approved ELSE FALSE END, "
    "created_at = CASE WHEN holds.keys = excluded.keys THEN holds.created_at "
    "ELSE excluded.created_at END"
)

#: An operator's decisions on held keys (see daemon.store.Decision).
DECISIONS = (
    "SELECT kind, object_id, decision, actor, decided_at, directory_hash, applied "
    "FROM hold_decisions WHERE target = ? ORDER BY kind, object_id"
)
PUT_DECISION = (
    "INSERT INTO hold_decisions (target, kind, object_id, decision, actor, decided_at, "
    "directory_hash, applied) VALUES (?, ?, ?, ?, ?, ?, ?, FALSE) "
    "ON CONFLICT (target, kind, object_id) DO UPDATE SET decision = excluded.decision, "
    "actor = excluded.actor, decided_at = excluded.decided_at, "
    "directory_hash = excluded.directory_hash, applied = FALSE"
)
_DECISION_OF = "target = ? AND kind = ? AND object_id = ? AND decided_at = ?"
KEEP_DECISION = f"UPDATE hold_decisions SET applied = TRUE WHERE {_DECISION_OF}"
DROP_DECISION = f"DELETE FROM hold_decisions WHERE {_DECISION_OF}"
DIRECTORY_HASH = "SELECT hash FROM directory_objects WHERE kind = ? AND object_id = ?"

# -- the provisioning log ---------------------------------------------------------------

LOG_COLUMNS = (
    "at, target, kind, object_id, cycle, outcome, changes, attributes, method, path, status, "
    "error, actor"
)
#: One entry (SQLite's bulk form, one statement per row; PostgreSQL sends arrays).
INSERT_LOG_ROW = (
    f"INSERT INTO provisioning_log ({LOG_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The entries of a page: a filter of fixed fragments (see log_query), newest first.
LOG_FILTERS = {
    "target": "target = ?",
    "kind": "kind = ?",
    "object_id": "object_id = ?",
    "before": "id < ?",
}


def log_query(filters: list[str]) -> str:
    """The page query for the named :data:`LOG_FILTERS`, its limit the last parameter."""
    where = " AND ".join(LOG_FILTERS[f] for f in filters) or "TRUE"
    return (
        f"SELECT id, {LOG_COLUMNS} FROM provisioning_log WHERE {where} "
        "ORDER BY id DESC LIMIT ?"
    )


#: The oldest entries before a time, a bounded batch at a time (the periodic purge).
PURGE_LOG = (
    "DELETE FROM provisioning_log WHERE id IN (SELECT id FROM provisioning_log "
    "WHERE at < ? ORDER BY at LIMIT ?)"
)

# -- what targets remember -----------------------------------------------------------

LINKS = "SELECT kind, object_id, remote_id, body FROM target_links WHERE target = ?"
UPSERT_LINK = (
    "INSERT INTO target_links (target, kind, object_id, remote_id, body) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (target, kind, object_id) DO UPDATE SET "
    "remote_id = excluded.remote_id, body = excluded.body"
)
DELETE_LINK = "DELETE FROM target_links WHERE target = ? AND kind = ? AND object_id = ?"

DEACTIVATIONS = (
    "SELECT object_id, remote_id, deactivated_at FROM target_deactivations WHERE target = ?"
)
UPSERT_DEACTIVATION = (
    "INSERT INTO target_deactivations (target, object_id, remote_id, deactivated_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (target, object_id) DO UPDATE SET "
    "remote_id = excluded.remote_id, deactivated_at = excluded.deactivated_at"
)
DELETE_DEACTIVATION = "DELETE FROM target_deactivations WHERE target = ? AND object_id = ?"

TARGET_META = "SELECT value FROM target_meta WHERE target = ? AND key = ?"
SET_TARGET_META = (
    "INSERT INTO target_meta (target, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (target, key) DO UPDATE SET value = excluded.value"
)

# -- leases (leader election) ---------------------------------------------------------
# Times are Unix seconds by the store's clock: SQLite passes the host's time as
# parameters, PostgreSQL computes them in its own statements (daemon.store.postgres).

LEASES = (
    "SELECT name, holder, term, acquired_at, renewed_at, expires_at FROM leases ORDER BY name"
)
LEASE = "SELECT holder, term, acquired_at, renewed_at, expires_at FROM leases WHERE name = ?"
INSERT_LEASE = (
    "INSERT INTO leases (name, holder, term, acquired_at, renewed_at, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
RENEW_LEASE = "UPDATE leases SET renewed_at = ?, expires_at = ? WHERE name = ?"
TAKE_LEASE = (
    "UPDATE leases SET holder = ?, term = ?, acquired_at = ?, renewed_at = ?, expires_at = ? "
    "WHERE name = ?"
)
RELEASE_LEASE = (
    "UPDATE leases SET expires_at = ? "
    "WHERE name = ? AND holder = ? AND term = ? AND expires_at > ?"
)

# -- sign-in state shared by every replica -------------------------------------------

#: The tables whose rows expire, each with an ``expires_at`` column.
EXPIRING = ("sessions", "claims", "parked", "login_failures")
DELETE_EXPIRED = {
    table: f"DELETE FROM {table} WHERE expires_at <= ?"
    for table in EXPIRING
}
COUNT_ROWS = {table: f"SELECT COUNT(*) FROM {table}" for table in ("claims", "parked")}

INIT_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"

CLAIM_HELD = "SELECT 1 FROM claims WHERE key = ? AND expires_at > ?"
# The WHERE keeps a racing claim from overwriting one that has not expired:
# of two writers, the one whose row is there first wins, the other gets no row.
CLAIM = (
    "INSERT INTO claims (key, expires_at) VALUES (?, ?) ON CONFLICT (key) "
    "DO UPDATE SET expires_at = excluded.expires_at WHERE claims.expires_at <= ? "
    "RETURNING key"
)

PARK = "INSERT INTO parked (handle, value, parked_at, expires_at) VALUES (?, ?, ?, ?)"
# One statement finds and deletes: of two takers, one gets the row.
TAKE_PARKED = "DELETE FROM parked WHERE handle = ? RETURNING value, parked_at, expires_at"

COUNT_FAILURES = "SELECT COUNT(*) FROM login_failures WHERE key = ? AND at > ?"
DELETE_EXPIRED_FAILURES_OF = "DELETE FROM login_failures WHERE key = ? AND expires_at <= ?"
ADD_FAILURE = "INSERT INTO login_failures (key, at, expires_at) VALUES (?, ?, ?)"
CLEAR_FAILURES = "DELETE FROM login_failures WHERE key = ?"

GET_SESSION = (
    "SELECT id, session_index, user_id, data, last_seen, expires_at FROM sessions WHERE id = ?"
)
PUT_SESSION = (
    "INSERT INTO sessions (id, session_index, user_id, data, last_seen, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    "session_index = excluded.session_index, user_id = excluded.user_id, "
    "data = excluded.data, last_seen = excluded.last_seen, expires_at = excluded.expires_at"
)
# Arguments: the user id twice, then how many of its sessions stay.
TRIM_SESSIONS = (
    "DELETE FROM sessions WHERE user_id = ? AND id NOT IN (SELECT id FROM sessions "
    "WHERE user_id = ? ORDER BY last_seen DESC, id LIMIT ?)"
)
TOUCH_SESSION = "UPDATE sessions SET last_seen = ?, expires_at = ? WHERE id = ?"
DELETE_SESSIONS = {
    column: f"DELETE FROM sessions WHERE {column} = ?"
    for column in ("id", "session_index", "user_id")
}

# -- second factors ---------------------------------------------------------------------

_FACTOR_COLUMNS = "user_id, id, kind, name, data, created_at, used_at"
FACTORS = f"SELECT {_FACTOR_COLUMNS} FROM mfa_factors WHERE user_id = ? ORDER BY created_at, id"
PUT_FACTOR = (
    f"INSERT INTO mfa_factors ({_FACTOR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (user_id, id) DO UPDATE SET kind = excluded.kind, name = excluded.name, "
    "data = excluded.data, created_at = excluded.created_at, used_at = excluded.used_at"
)
# Arguments: the new data and used_at, then user id, factor id and the data expected.
SWAP_FACTOR = (
    "UPDATE mfa_factors SET data = ?, used_at = ? WHERE user_id = ? AND id = ? AND data = ?"
)
DELETE_FACTOR = "DELETE FROM mfa_factors WHERE user_id = ? AND id = ?"
DELETE_FACTORS = "DELETE FROM mfa_factors WHERE user_id = ?"
DELETE_FACTORS_OF_KIND = "DELETE FROM mfa_factors WHERE user_id = ? AND kind = ?"
FACTOR_USERS = "SELECT user_id, COUNT(*) FROM mfa_factors GROUP BY user_id ORDER BY user_id"

# -- logins of users stored before schema version 2 ----------------------------------

MISSING_LOGINS = "FROM directory_objects WHERE kind = 'user' AND login_username IS NULL"
FILL_LOGINS = (
    "UPDATE directory_objects SET login_username = ?, login_email = ? "
    "WHERE kind = 'user' AND object_id = ?"
)


_PLACEHOLDER = re.compile(r"\?")


@functools.cache
def numbered(sql: str) -> str:
    """``sql`` with each ``?`` replaced by ``$1``, ``$2``, ... (PostgreSQL's placeholders).

    The statements here hold no ``?`` inside a string literal, so every one
    is a placeholder.
    """
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
