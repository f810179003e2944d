"""Records, plans and whole numbered "worlds" for the store contract suite."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.model import AccountState, DirectoryObject, Group, User, content_hash, make_group
from daemon.store import Committed, DesiredRow, Key, Result, TargetIndex, TargetPlan

Upsert = tuple[Key, str, DirectoryObject]


class Unencodable:
    """A field value no backend can store: its record fails to encode mid-transaction."""


def user(uid: str, **fields: object) -> User:
    values: dict[str, object] = {"id": uid, "username": uid, "email": f"{uid}@example.org"}
    values.update(fields)
    return User(**values)  # type: ignore[arg-type]


def group(gid: str, *members: str, name: str | None = None) -> Group:
    return make_group(gid, name or f"Group {gid}", members)


def key(obj: DirectoryObject) -> Key:
    return ("user", obj.id) if isinstance(obj, User) else ("group", obj.id)


def upsert(obj: DirectoryObject) -> Upsert:
    return key(obj), content_hash(obj), obj


def want(obj: DirectoryObject, active: bool | None = None) -> DesiredRow:
    """The target should hold ``obj`` (users default to active unless suspended)."""
    if isinstance(obj, User) and active is None:
        active = obj.active
    return DesiredRow(key(obj), content_hash(obj), obj, active)


def removal(k: Key) -> DesiredRow:
    return DesiredRow(k, None, None, None)


def plan(
    *rows: DesiredRow, released: list[Key] | None = None, hold: frozenset[Key] | None = None
) -> TargetPlan:
    return TargetPlan(list(rows), released or [], hold)


def poisoned_user(uid: str = "poison") -> User:
    return user(uid, title=Unencodable())


def poisoned_row() -> DesiredRow:
    """A plan row whose record cannot be stored (its hash is made up: hashing would fail)."""
    return DesiredRow(("user", "poison"), "h-poison", poisoned_user(), True)


def ok(k: Key, delivered: str | None, remote_id: str | None = None) -> Result:
    return Result(k, delivered, True, remote_id, None, 0.0)


def failed(
    k: Key, delivered: str | None, error: str, retry_at: float, remote_id: str | None = None
) -> Result:
    return Result(k, delivered, False, remote_id, error, retry_at)


# -- numbered worlds -------------------------------------------------------------------

TARGETS = ("a", "b")


@dataclass
class World:
    """Directory and plans at version ``n``; every version differs from the last.

    A fifth of the users (a different fifth each version) is absent, so each
    commit upserts, deletes and plans removals; every present record changes.
    Target ``a`` holds the absent users on odd versions.
    """

    n: int
    objects: dict[Key, DirectoryObject]
    absent: list[Key]
    plans: dict[str, TargetPlan] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"v{self.n}"

    @property
    def hashes(self) -> dict[Key, str]:
        return {k: content_hash(obj) for k, obj in self.objects.items()}

    @property
    def committed(self) -> Committed:
        return Committed(self.version, self.hashes)

    def commit_args(
        self,
    ) -> tuple[str, list[Upsert], list[Key], dict[str, TargetPlan]]:
        return self.version, [upsert(o) for o in self.objects.values()], self.absent, self.plans

    def index(self) -> TargetIndex:
        """A target's index after commits only: removals of unwritten objects are dropped."""
        return TargetIndex(
            hashes=dict(self.hashes),
            active={o.id for o in self.objects.values() if isinstance(o, User) and o.active},
        )

    def hold(self, target: str) -> frozenset[Key] | None:
        return self.plans[target].hold


def world(n: int, users: int = 200, groups: int = 10) -> World:
    present = [i for i in range(users) if i % 5 != n % 5]
    people = [
        User(
            id=f"u{i:04d}",
            username=f"user{i}",
            email=f"user{i}@example.org",
            title=f"title {n}",
            state=AccountState.ACTIVE if (i + n) % 4 else AccountState.SUSPENDED,
        )
        for i in present
    ]
    teams = [
        make_group(
            f"g{j:02d}", f"Group {j} at {n}", [p.id for p in people if int(p.id[1:]) % groups == j]
        )
        for j in range(groups)
    ]
    objects: dict[Key, DirectoryObject] = {key(o): o for o in [*people, *teams]}
    absent: list[Key] = [("user", f"u{i:04d}") for i in range(users) if i % 5 == n % 5]
    w = World(n, objects, absent)
    for target in TARGETS:
        rows = [want(o) for o in objects.values()] + [removal(k) for k in absent]
        hold = frozenset(absent) if target == "a" and n % 2 else None
        w.plans[target] = TargetPlan(rows, [], hold)
    return w


# -- raw data for migration tests ----------------------------------------------------


@dataclass(frozen=True)
class SeedRow:
    """One ``target_objects`` row as an older provisiond would have written it."""

    target: str
    key: Key
    desired: DirectoryObject | None
    active: bool | None
    written: DirectoryObject | None
    remote_id: str | None
    dirty: bool
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float = 0.0

    @property
    def desired_hash(self) -> str | None:
        return None if self.desired is None else content_hash(self.desired)

    @property
    def written_hash(self) -> str | None:
        return None if self.written is None else content_hash(self.written)


@dataclass(frozen=True)
class SeedHold:
    target: str
    keys: frozenset[Key]
    created_at: float
    approved: bool


@dataclass(frozen=True)
class Seed:
    """A whole store's content, written by a factory with raw statements (not the protocol)."""

    version: str
    committed_at: float
    objects: list[DirectoryObject]
    rows: list[SeedRow]
    holds: list[SeedHold]
    meta: dict[str, str]
