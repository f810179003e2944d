"""Durable state: what the directory looked like, and what each target holds.

The engine talks to a :class:`Store`; :mod:`daemon.store.sqlite` is the
embedded default and :mod:`daemon.store.postgres` the backend several
replicas share. The SQL both run is written once, in :mod:`daemon.store.sql`.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from daemon import metrics
from daemon.model import DirectoryObject, Group, ObjectKind, User

Key = tuple[ObjectKind, str]

# Delivery phases, as stored with each dirty row so that due work comes out
# in order: users, then groups, then group removals, then user removals.
PHASE_USER = 0
PHASE_GROUP = 1
PHASE_GROUP_REMOVAL = 3
PHASE_USER_REMOVAL = 4


def phase(kind: ObjectKind, removal: bool) -> int:
    if kind == "user":
        return PHASE_USER_REMOVAL if removal else PHASE_USER
    return PHASE_GROUP_REMOVAL if removal else PHASE_GROUP


class StateError(Exception):
    """The state store cannot be opened or reached, or its schema is newer than this provisiond."""


class StoreFull(Exception):
    """A bounded table already holds its limit of unexpired entries; nothing was added."""


class FencedOut(StateError):
    """A write made under a :class:`Fence` whose lease is no longer the writer's.

    Another replica took the lease over (a newer term), or it expired. The
    write changed nothing.
    """


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a write is conditional on: ``lease`` held by ``holder`` at ``term``."""

    lease: str
    holder: str
    term: int


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease row. Times are the store's clock (Unix seconds), never a replica's.

    ``term`` grows by one each time the lease changes hands (or is taken again
    after it expired); a renewal keeps it. ``expires_in`` is ``expires_at``
    less the store's clock when the row was read: zero or less means the
    lease is free.
    """

    name: str
    holder: str
    term: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    expires_in: float

    @property
    def live(self) -> bool:
        return self.expires_in > 0

    @property
    def fence(self) -> Fence:
        return Fence(self.name, self.holder, self.term)


def check_fence(fence: Fence, lease: Lease | None) -> None:
    """Raise :class:`FencedOut` unless ``lease`` (read in the write) is ``fence``'s."""
    if lease is not None and lease.live and lease.fence == fence:
        return
    if lease is None:
        now = "nobody ever held it"
    elif lease.holder == fence.holder and lease.term == fence.term:
        now = f"it expired {-lease.expires_in:.1f}s ago"
    else:
        state = "holds" if lease.live else "held"
        now = f"{lease.holder} {state} it at term {lease.term}"
    raise FencedOut(
        f"lease {fence.lease} is no longer held by {fence.holder} at term {fence.term} "
        f"({now}); nothing was written"
    )


class StoreUnavailable(StateError):
    """The state store's server cannot be reached now (connection refused, lost, shut down).

    The call did not take effect, or (a connection lost during COMMIT) may
    have; either way the store is consistent, and the call can be made again.
    """


@dataclass(frozen=True, slots=True)
class Committed:
    """The last committed snapshot: its version and the hash of every object."""

    version: str | None
    hashes: dict[Key, str]


@dataclass(frozen=True, slots=True)
class DesiredRow:
    """What a target should now hold for one object (``obj=None``: remove it)."""

    key: Key
    hash: str | None
    obj: DirectoryObject | None
    active: bool | None


@dataclass(slots=True)
class TargetIndex:
    """A target's recorded desired state, kept in memory between cycles.

    ``hashes`` maps every object the target knows to its desired hash
    (``None``: a removal not yet confirmed). ``active`` holds the users whose
    desired state is active (the guard's denominator).
    """

    hashes: dict[Key, str | None] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Settled:
    """What a planning cycle did with an operator's decision on a held key.

    ``keep``: a rejection still in force, marked applied (it no longer makes
    cycles plan again). Otherwise the decision is spent (an approval the plan
    used) or has lapsed (the directory record changed), and is deleted. Only
    the decision made at ``decided_at`` is touched: a newer one stays.
    """

    key: Key
    decided_at: float
    keep: bool


@dataclass(frozen=True, slots=True)
class TargetPlan:
    """One target's part of a cycle's commit.

    ``desired`` rows are upserted and marked dirty. ``released`` objects stop
    being managed (a group unbound from the target) and are forgotten without
    any delivery. ``hold`` replaces the target's hold: a set of keys held by
    the mass-removal guard, or ``None`` to clear it. ``settled`` are the
    operator's decisions this plan used (see :class:`Settled`).
    """

    desired: list[DesiredRow]
    released: list[Key]
    hold: frozenset[Key] | None
    settled: tuple[Settled, ...] = ()


@dataclass(frozen=True, slots=True)
class DueRow:
    """A dirty object ready for delivery."""

    key: Key
    remote_id: str | None
    desired_hash: str | None
    desired: DirectoryObject | None
    written: DirectoryObject | None
    attempts: int


@dataclass(frozen=True, slots=True)
class TargetObject:
    """Everything the store holds about one object for one target (``provisiond explain``).

    ``updated_at`` is when the row last changed (a plan, a delivery, a failure).
    """

    row: DueRow
    active: bool | None
    dirty: bool
    last_error: str | None
    next_attempt_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one delivery, as the store records it."""

    key: Key
    delivered_hash: str | None
    ok: bool
    remote_id: str | None
    error: str | None
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class Hold:
    target: str
    keys: frozenset[Key]
    created_at: float
    approved: bool


#: What an operator decided about a held key.
APPROVED = "approved"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Decision:
    """An operator's decision on one held key of a target.

    ``approved``: the held change goes out at the next cycle (then the
    decision is spent). ``rejected``: the change is not made, and the target
    keeps what it has, until the directory record changes again:
    ``directory_hash`` is the record's hash when the decision was made
    (``None``: the record was gone). ``applied``: a cycle has planned with it.
    """

    key: Key
    decision: str
    actor: str
    decided_at: float
    directory_hash: str | None
    applied: bool = False


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of the provisioning log: an operation decided or made for one object.

    ``outcome`` is one of :data:`LOG_OUTCOMES`. ``changes`` are change kind
    names (``user_changed``) and ``attributes`` the names of the attributes
    that changed, never their values. ``method``, ``path`` and ``status`` are
    the last request made for the operation (SCIM), if any. ``actor`` is who
    made a decision (an operator), or ``None`` for the daemon. ``id`` is the
    store's, growing with every entry (``None`` before it is written).
    """

    at: float
    target: str
    key: Key
    outcome: str
    cycle: str | None = None
    changes: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    method: str | None = None
    path: str | None = None
    status: int | None = None
    error: str | None = None
    actor: str | None = None
    id: int | None = None


#: ``planned``: a new desired state was committed; ``held``: the guard held it;
#: ``delivered`` / ``failed``: a delivery; ``approved`` / ``rejected``: an
#: operator's decision on a held key.
LOG_OUTCOMES = ("planned", "held", "delivered", "failed", "approved", "rejected")


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    key: Key
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class Link:
    """What a target last wrote for one object: its remote id and the body sent.

    ``remote_id`` is ``None`` for an object deliberately not created (a user
    deactivated before its first delivery). ``body`` is the target's own
    representation (for SCIM, the JSON last written): the baseline of minimal
    updates and of reconciliation.
    """

    remote_id: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Deactivation:
    """A user deactivated remotely whose deletion waits for a grace period."""

    remote_id: str
    at: float


@dataclass(frozen=True, slots=True)
class TargetLinks:
    """Everything a target remembers about its remote objects (see :class:`Link`)."""

    links: dict[Key, Link]
    deactivations: dict[str, Deactivation]


@dataclass(frozen=True, slots=True)
class LinkChanges:
    """Changes to a target's :class:`TargetLinks`, written in one transaction.

    ``links`` maps a key to its new link, or ``None`` to forget it; likewise
    ``deactivations``. ``meta`` sets per-target values (see
    :meth:`Store.target_meta`) in the same transaction.
    """

    links: dict[Key, Link | None] = field(default_factory=dict)
    deactivations: dict[str, Deactivation | None] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.links or self.deactivations or self.meta)


@dataclass(frozen=True, slots=True)
class FactorRecord:
    """One second factor of one user (a TOTP key, a passkey, a recovery code).

    ``id`` is unique per user (``"totp"``, a passkey's credential id,
    ``"recovery:<digest>"``); ``kind`` is ``"totp"``, ``"passkey"`` or
    ``"recovery"``; ``name`` is what the user calls it. The portal decides
    what ``data`` holds (JSON), and encrypts any secret in it before it
    reaches the store. Times are Unix seconds.
    """

    user_id: str
    id: str
    kind: str
    name: str
    data: str
    created_at: float
    used_at: float | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One sign-in session as the store keeps it; the portal decides what ``data`` holds.

    ``id`` is the key, ``session_index`` and ``user_id`` are indexed for
    revocation, and ``expires_at`` is when the session ends unless it is used
    again (after it, :meth:`Store.purge` deletes it). Times are Unix seconds.
    """

    id: str
    session_index: str
    user_id: str
    data: str
    last_seen: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ParkedValue:
    """A value parked under a handle (see :meth:`Store.park`)."""

    value: str
    parked_at: float
    expires_at: float


class Store(Protocol):
    """What the engine needs from durable state. All methods are atomic.

    A write given a ``fence`` first checks, inside its own transaction and
    with the lease row locked, that the fence's lease is still held by its
    holder at its term and has not expired; otherwise it raises
    :class:`FencedOut` and writes nothing. Without a fence (a single
    process) it writes unconditionally.
    """

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def check(self) -> list[str]:
        """Lines for ``provisiond check``: where the store is, its server, its schema version."""
        ...

    async def committed(self) -> Committed: ...

    async def records(self, keys: list[Key]) -> dict[Key, DirectoryObject]:
        """The committed directory records for ``keys`` (missing ones left out)."""
        ...

    async def groups(self) -> list[Group]:
        """Every group of the committed snapshot (``explain``: who is in which group)."""
        ...

    async def find_user(self, login: str) -> User | None:
        """The committed user whose username or email is ``login`` (case-insensitive)."""
        ...

    async def granted(self, target: str, user_id: str) -> bool:
        """Whether the target's desired state has this user active (in scope, not suspended)."""
        ...

    async def target_index(self, target: str) -> TargetIndex: ...

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
        """In one transaction: record every target's plan, then the new snapshot.

        ``log`` entries go to the provisioning log in the same transaction.
        """
        ...

    async def due(self, target: str, now: float, limit: int) -> list[DueRow]:
        """Dirty objects whose retry time has come, in delivery order."""
        ...

    async def rows(self, target: str, keys: list[Key] | None) -> dict[Key, DueRow]:
        """The stored rows for ``keys`` (``None``: every dirty row), for ``plan``."""
        ...

    async def target_object(self, target: str, key: Key) -> TargetObject | None:
        """The target's row for one object, or ``None`` if the target does not know it."""
        ...

    async def record(
        self,
        target: str,
        results: list[Result],
        now: float,
        *,
        fence: Fence | None = None,
        log: Sequence[LogEntry] = (),
    ) -> None:
        """Record delivery results (and their ``log`` entries) in one transaction."""
        ...

    async def counts(self, target: str) -> tuple[int, int]:
        """``(dirty, failed)`` object counts for a target."""
        ...

    async def problems(self, target: str, limit: int) -> list[ObjectStatus]: ...

    async def hold(self, target: str) -> Hold | None: ...

    async def approved_holds(self) -> list[str]:
        """Targets whose hold was approved and awaits a cycle to release it."""
        ...

    async def approve(self, target: str, keys: frozenset[Key] | None = None) -> int:
        """Mark the target's hold approved; the number of held objects (0: none).

        ``keys``: only if the hold holds exactly these keys (those the operator
        saw), checked in the same transaction; otherwise nothing is approved
        and 0 is returned. The approval lasts until a cycle releases the hold,
        or a cycle's hold holds other keys (an approval made while a cycle ran
        survives that cycle's commit of the same keys).
        """
        ...

    async def retry_now(self, target: str, keys: Sequence[Key], now: float) -> int:
        """Make the failed objects among ``keys`` due at ``now`` (their backoff is cut
        short; attempts and the last error stay); the number of objects changed."""
        ...

    async def search_users(self, text: str, limit: int) -> list[User]:
        """At most ``limit`` users whose username, email or record contains ``text``
        (case-insensitive for ASCII), by username: candidates for a search by name."""
        ...

    async def decide(
        self, target: str, keys: Sequence[Key], decision: str, actor: str, at: float
    ) -> list[Key]:
        """Record an operator's ``decision`` (:data:`APPROVED` or :data:`REJECTED`) on held keys.

        Only the keys in the target's hold when the transaction runs are
        decided (the others are left out of the answer): a stale list decides
        nothing it did not show. A rejection binds to the directory record's
        hash now. Each decision is a provisioning-log entry, in the same
        transaction. Returns the keys decided, sorted.
        """
        ...

    async def decisions(self, target: str) -> dict[Key, Decision]:
        """The target's decisions not yet spent or lapsed."""
        ...

    # -- the provisioning log -----------------------------------------------------------

    async def log_entries(
        self,
        *,
        target: str | None = None,
        key: Key | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[LogEntry]:
        """Provisioning-log entries, newest first: of ``target`` and/or ``key`` if given,
        with an id below ``before`` if given (the next page), at most ``limit``."""
        ...

    async def purge_log(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` of the oldest log entries made before ``before``; how many."""
        ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str, *, fence: Fence | None = None) -> None: ...

    # -- what targets remember (no target opens a database of its own) ---------------

    async def target_links(self, target: str) -> TargetLinks:
        """Every link and pending deactivation the target recorded."""
        ...

    async def save_links(
        self, target: str, changes: LinkChanges, *, fence: Fence | None = None
    ) -> None:
        """Apply ``changes`` to the target's links in one transaction."""
        ...

    async def target_meta(self, target: str, key: str) -> str | None:
        """A value the target stored for itself (for example when it last reconciled)."""
        ...

    async def set_target_meta(
        self, target: str, key: str, value: str, *, fence: Fence | None = None
    ) -> None: ...

    # -- leader election (several replicas on one store) ------------------------------

    async def acquire_lease(self, name: str, holder: str, seconds: float) -> Lease | None:
        """Take lease ``name`` for ``seconds`` by the store's clock, or renew it.

        Free (never taken, released, or expired): ``holder`` takes it with the
        next term. Live and ``holder``'s: renewed, same term. Live and someone
        else's: ``None``, nothing changes. Two stores racing: exactly one wins.
        """
        ...

    async def release_lease(self, name: str, holder: str, term: int) -> None:
        """Let the lease expire now, if ``holder`` still holds it at ``term`` (a clean stop)."""
        ...

    async def leases(self) -> list[Lease]:
        """Every lease row, by name."""
        ...

    # -- sign-in state every replica shares (the portal and the SAML endpoint) -------
    #
    # Plain values only: the store knows nothing of sessions' or requests' meaning.
    # Times are Unix seconds of the caller's clock, and ``now`` says what has
    # expired. Each method is atomic across every process on the database.
    # A store that cannot be reached raises StateError.

    async def init_meta(self, key: str, value: str) -> str:
        """Set meta ``key`` to ``value`` unless it has a value; return the value it holds.

        Of callers racing with different values, all get the one that was stored first.
        """
        ...

    async def claim(self, key: str, expires_at: float, now: float, limit: int) -> bool:
        """Record ``key`` until ``expires_at``; False if it is recorded and unexpired.

        Of callers racing for one key, exactly one gets True (a unique key).
        Raises :class:`StoreFull` when ``limit`` unexpired claims exist.
        """
        ...

    async def park(
        self, handle: str, value: str, parked_at: float, expires_at: float, now: float, limit: int
    ) -> None:
        """Keep ``value`` under the new ``handle`` until ``expires_at``.

        Raises :class:`StoreFull` when ``limit`` unexpired values are parked.
        """
        ...

    async def take_parked(self, handle: str, now: float) -> ParkedValue | None:
        """The value parked under ``handle``, removed; ``None`` if unknown, taken or expired.

        Of callers racing for one handle, at most one gets the value.
        """
        ...

    async def count_failures(self, key: str, since: float) -> int:
        """How many failures of ``key`` were recorded after ``since``, by every process."""
        ...

    async def add_failures(self, keys: Sequence[str], at: float, expires_at: float) -> None:
        """Record one failure of each of ``keys`` at ``at``, kept until ``expires_at``."""
        ...

    async def clear_failures(self, key: str) -> None:
        """Forget every failure of ``key``."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, expired or not (the caller checks); ``None`` if unknown."""
        ...

    async def put_session(self, record: SessionRecord, now: float, per_user: int) -> None:
        """Create or replace a session.

        The user's other sessions beyond the ``per_user`` most recently seen are
        deleted, and so are sessions expired at ``now``.
        """
        ...

    async def touch_session(self, session_id: str, last_seen: float, expires_at: float) -> bool:
        """Record a use of the session; False (and nothing created) if it is gone."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Delete one session (no error if it is unknown)."""
        ...

    async def delete_sessions_by_index(self, session_index: str) -> int:
        """Delete the sessions with this SAML SessionIndex; how many there were."""
        ...

    async def delete_user_sessions(self, user_id: str) -> int:
        """Delete every session of a user; how many there were."""
        ...

    async def purge(self, now: float) -> int:
        """Delete every session, claim, parked value and failure expired at ``now``; the count."""
        ...

    # -- second factors (kept until removed: they do not expire) ------------------------

    async def factors(self, user_id: str) -> list[FactorRecord]:
        """The factors of a user, oldest first (ties by id)."""
        ...

    async def put_factor(self, record: FactorRecord) -> None:
        """Create the factor, or replace the one with the same user and id."""
        ...

    async def swap_factor(
        self, user_id: str, factor_id: str, expected_data: str, data: str, used_at: float
    ) -> bool:
        """Set ``data`` and ``used_at`` only if the factor still holds ``expected_data``.

        Of two racing swaps from the same ``expected_data``, one wins: the
        guard against a TOTP code or a passkey assertion used twice.
        """
        ...

    async def delete_factor(self, user_id: str, factor_id: str) -> bool:
        """Delete one factor; ``True`` only for the caller that deleted it (a recovery code
        is used once)."""
        ...

    async def delete_factors(self, user_id: str, kind: str | None = None) -> int:
        """Delete every factor of a user (of ``kind`` only, if given); how many there were."""
        ...

    async def factor_users(self) -> list[tuple[str, int]]:
        """Every user with a factor, and how many they have, ordered by user id."""
        ...


#: The names of every :class:`Store` method, each timed by :func:`timed`.
STORE_METHODS: tuple[str, ...] = tuple(
    name for name, value in vars(Store).items() if inspect.iscoroutinefunction(value)
)

_S = TypeVar("_S")


def timed(cls: type[_S]) -> type[_S]:
    """Class decorator for a backend: every :class:`Store` method it has is timed.

    Each call, however it ends, is observed in ``provisiond_store_seconds``
    with the method's name as ``operation``: one place for every backend.
    """
    for name in STORE_METHODS:
        setattr(cls, name, _timed(name, getattr(cls, name)))
    return cls


def _timed(
    name: str, method: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    observe = metrics.STORE_SECONDS.labels(name).observe

    @functools.wraps(method)
    async def timed_call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            observe(time.perf_counter() - start)

    return timed_call
