"""One cycle: observe the directory, plan every target, commit, deliver.

The engine is a level-triggered controller. Planning records, per target and
object, the desired record; delivery sends each dirty object the changes from
what the target last confirmed to what it should hold. A crash between the
two loses nothing: the next cycle finds the same dirty rows. A quiet cycle
costs one source check and one indexed query per target.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections import ChainMap, Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import pluggy
import structlog

from daemon import metrics, provlog
from daemon.assignment import (
    Assignment,
    MemberLosses,
    ScopedPlan,
    member_losses,
    plan,
    plan_changed,
)
from daemon.changes import Change, describe
from daemon.config import EngineSettings, GuardSettings, TargetSettings
from daemon.decisions import apply_decisions
from daemon.diff import delivery_order, diff_object
from daemon.leadership import SOURCE, Leadership, target_lease
from daemon.memory import release_free_memory
from daemon.model import DirectoryObject, Group, Logins, Snapshot, User, content_hash
from daemon.plugins import await_me_maybe
from daemon.report import CycleReport, TargetReport
from daemon.runtime import REMOTE_WRITES, NotLeader
from daemon.screening import (
    STALE_META,
    Screened,
    StaleObject,
    duplicate_logins,
    screen,
    stale_doc,
    stale_objects,
)
from daemon.sources.base import ChangeNotice, Source, SourceError
from daemon.store import (
    Committed,
    DesiredRow,
    DueRow,
    Fence,
    FencedOut,
    Key,
    LogEntry,
    Result,
    Settled,
    Store,
    StoreUnavailable,
    TargetIndex,
    TargetPlan,
    phase,
)
from daemon.store.fenced import FencedStore
from daemon.targets.base import Delta, Outcome, Target

log = structlog.get_logger("provisiond.engine")

#: A cycle with this many changes, or one that compared a whole snapshot, hands the
#: memory it freed back to the system when it has committed (:mod:`daemon.memory`).
LARGE_CHANGE = 1000


@dataclass
class TargetSlot:
    """A configured target as the engine runs it."""

    settings: TargetSettings
    target: Target
    index: TargetIndex | None = None
    started: bool = False
    #: The first delivery and the first periodic work may both start the target.
    start_lock: anyio.Lock = field(default_factory=anyio.Lock)
    #: Under leader election: the term this replica started the target in, and
    #: the store view (every write fenced by it) the target was started with.
    fence: Fence | None = None
    store: Store | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def assignment(self) -> Assignment:
        return Assignment(self.settings.name, tuple(self.settings.groups))


@dataclass(frozen=True)
class PlannedDelta:
    """One entry of ``provisiond plan``."""

    target: str
    delta: Delta
    status: str  # "new", "retry" or "held"


@dataclass
class _Observation:
    snapshot: Snapshot
    hashes: dict[Key, str]
    changes: list[Change]
    upserts: list[tuple[Key, str, object]]
    deletes: list[Key]
    plans: dict[str, _TargetPlanned]
    #: The committed records of the changed and deleted keys (proportional cycles).
    before: dict[Key, DirectoryObject] = field(default_factory=dict)
    #: Proportional cycles: ``hashes`` is the committed dict itself, and these new
    #: hashes go into it once the commit succeeded (copying it costs more).
    hash_updates: dict[Key, str] | None = None


@dataclass(frozen=True)
class _TargetPlanned:
    """One target's plan in a cycle: the rows, the keys held, the decisions it used."""

    scoped: ScopedPlan
    held: frozenset[Key]
    settled: tuple[Settled, ...] = ()


NO_LOSSES = MemberLosses({}, [], 0, 0)


def guard(
    scoped: ScopedPlan,
    settings: GuardSettings,
    approved: frozenset[Key],
    losses: MemberLosses = NO_LOSSES,
    pending: frozenset[Key] = frozenset(),
) -> frozenset[Key]:
    """The rows to hold back, or an empty set.

    Three measures, each against the target's recorded state; a measure
    trips when it reaches ``min_count`` *and* exceeds ``max_share`` of its
    denominator:

    - users deactivated or removed, of the target's active users;
    - memberships removed (group rows that lose members, deleted groups
      counting all of theirs), of the target's recorded memberships;
    - groups deleted, of the target's recorded groups.

    When one trips, every destructive row of the cycle is held together: the
    deactivations, the groups that lose members and the group deletions, so
    that a wipe can go out neither as deactivations nor as PATCHes emptying
    the groups. Keys an operator approved are neither counted nor held again.
    Keys of the target's current hold (``pending``) that the plan still
    removes stay held whether or not a measure trips: a hold waits for an
    operator's decision, key by key or all at once.
    """
    users = [k for k in scoped.deactivations if k not in approved]
    groups = [k for k in losses.groups if k not in approved]
    lost = sum(losses.groups[k] for k in groups)
    deleted = [k for k in losses.deleted if k not in approved]

    def past(n: int, of: int) -> bool:
        return n >= settings.min_count and n > settings.max_share * of

    if (
        past(len(users), scoped.active_before)
        or past(lost, losses.memberships)
        or past(len(deleted), losses.groups_before)
    ):
        return frozenset(users).union(groups, deleted)
    return frozenset(users).union(groups, deleted) & pending


class Pending:
    """Change notices waiting for their cycle, coalesced in bounded memory.

    The ids of the changed objects are kept, at most ``max_keys`` of them (users
    and groups together); past that, or after a notice that cannot say which
    objects changed, the pending change is "everything". The times the notices
    were seen are kept for the lag metric, at most ``max_keys`` of them too,
    and the oldest one always.
    """

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.users: set[str] | None = set()
        self.groups: set[str] | None = set()
        self.seen: list[float] = []
        self.oldest: float | None = None
        self.notices = 0
        #: ``time.monotonic()`` of the first and the last notice since the last take.
        self.first_at: float | None = None
        self.last_at: float | None = None

    def __len__(self) -> int:
        return self.notices

    @property
    def everything(self) -> bool:
        return self.users is None or self.groups is None

    @property
    def keys(self) -> int:
        """How many object ids are kept now."""
        return (
            0 if self.users is None or self.groups is None else len(self.users) + len(self.groups)
        )

    def add(self, notice: ChangeNotice, now: float) -> None:
        self.notices += 1
        self.first_at = now if self.first_at is None else self.first_at
        self.last_at = now
        self._seen(notice.seen_at)
        self._merge(notice.users, notice.groups)

    def _seen(self, at: float) -> None:
        if len(self.seen) < self.max_keys:
            self.seen.append(at)
        self.oldest = at if self.oldest is None else min(self.oldest, at)

    def _merge(self, users: frozenset[str] | None, groups: frozenset[str] | None) -> None:
        if self.users is None or self.groups is None:
            return
        if users is None or groups is None:
            self.users = self.groups = None
            return
        self.users |= users
        self.groups |= groups
        if len(self.users) + len(self.groups) > self.max_keys:
            self.users = self.groups = None  # a flood: forget the ids, read everything

    def take(self) -> tuple[ChangeNotice | None, list[float]]:
        """The pending change as one notice (``None``: nothing pending) and the times seen."""
        if not self.notices or self.oldest is None:
            return None, []
        if self.users is None or self.groups is None:
            notice = ChangeNotice(self.oldest)
        else:
            notice = ChangeNotice(self.oldest, frozenset(self.users), frozenset(self.groups))
        seen = self.seen if self.oldest in self.seen else [*self.seen, self.oldest]
        self.users, self.groups, self.seen, self.oldest, self.notices = set(), set(), [], None, 0
        self.first_at = self.last_at = None
        return notice, seen

    def put_back(self, notice: ChangeNotice, seen: list[float], now: float) -> None:
        """Return a taken change whose cycle failed: the next cycle takes it again."""
        self.notices += len(seen)
        self.first_at = now if self.first_at is None else self.first_at
        self.last_at = self.last_at or now
        for at in seen:
            self._seen(at)
        self._merge(notice.users, notice.groups)


class Engine:
    """Runs cycles for one source and its targets over one store."""

    def __init__(
        self,
        source: Source,
        targets: Sequence[TargetSlot],
        store: Store,
        pm: pluggy.PluginManager,
        settings: EngineSettings,
        clock: Callable[[], float] = time.time,
        leadership: Leadership | None = None,
    ) -> None:
        self.source = source
        self.targets = list(targets)
        self.store = store
        self.pm = pm
        self.settings = settings
        self.clock = clock
        #: Leader election among replicas; ``None``: this process does everything.
        self.leadership = leadership
        self.stopping = False
        self.force_plan = True  # plan once after start: the configuration may have changed
        self._committed: Committed | None = None
        #: The committed users' logins (see :class:`Logins`), for proportional cycles;
        #: ``None`` while the committed snapshot has shared logins (then every cycle
        #: screens it all).
        self._logins: Logins | None = None
        #: The source lease term this engine's cached committed state belongs to.
        self._source_fence: Fence | None = None
        self.last_report: CycleReport | None = None
        #: Called as ``progress(target, done, total)`` while delivering (CLI progress bars).
        self.progress: Callable[[str, int, int], None] | None = None
        #: Changes the source announced (``announce``) that no cycle has taken yet.
        self.pending = Pending(settings.max_pending_keys)
        self._noticed = anyio.Event()
        self.monotonic: Callable[[], float] = time.monotonic
        #: Whether cycles write the provisioning log (``state.log_retention_days`` > 0).
        self.provisioning_log = True
        #: Called as ``on_delivered(target, delta, result, outcome)`` for each object
        #: delivered (``provisiond sync --user``'s step-by-step report).
        self.on_delivered: Callable[[str, Delta, Result, Outcome | None], None] | None = None

    def reconfigure(
        self, source: Source, targets: Sequence[TargetSlot], settings: EngineSettings
    ) -> None:
        """Run the next cycles with a new source, targets and settings (a reload).

        Call it between cycles. The next cycle plans every target again, since
        the bound groups or guard settings may have changed.
        """
        self.source = source
        self.targets = list(targets)
        self.settings = settings
        self.pending.max_keys = settings.max_pending_keys
        self.force_plan = True

    # -- change notices ------------------------------------------------------------

    def announce(self, notice: ChangeNotice) -> None:
        """A watching source's notice (an :data:`~daemon.sources.base.Announce`).

        Never blocks: the notice joins :attr:`pending`, and :meth:`settled`
        returns once the burst it belongs to is over.
        """
        metrics.CHANGE_EVENTS.labels(self.source.kind).inc()
        self.pending.add(notice, self.monotonic())
        self._noticed.set()

    async def settled(self) -> None:
        """Return when announced changes are waiting and their burst is over.

        A burst is over once no notice came for ``engine.debounce`` seconds,
        or, under a steady stream of notices, four times that after its first
        notice: a flood still gets a cycle every so often. Notices that come
        while a cycle runs wait for the next one, which takes them all.
        """
        while True:
            await self._noticed.wait()
            first, last = self.pending.first_at, self.pending.last_at
            if first is None or last is None:
                self._noticed = anyio.Event()  # taken meanwhile by a cycle
                continue
            debounce = self.settings.debounce
            deadline = min(last + debounce, first + 4 * debounce)
            wait = deadline - self.monotonic()
            if wait <= 0:
                return
            await anyio.sleep(wait)

    def _take_pending(self) -> tuple[ChangeNotice | None, list[float]]:
        taken = self.pending.take()
        self._noticed = anyio.Event()
        return taken

    def _pending_done(
        self, report: CycleReport, notice: ChangeNotice | None, seen: list[float]
    ) -> None:
        if notice is None:
            return
        if report.result == "failed":
            self.pending.put_back(notice, seen, self.monotonic())
            return  # no new wake-up: the next poll, or the next notice, retries
        kind = self.source.kind
        now = self.clock()
        for at in seen:
            metrics.CHANGE_LAG.labels(kind).observe(max(0.0, now - at))

    # -- one cycle ---------------------------------------------------------------

    async def cycle(self, only: frozenset[Key] | None = None) -> CycleReport:
        """One cycle. With ``only``: plan as usual, but deliver only those objects, now
        (their retry times ignored): provisioning on demand."""
        report = CycleReport(id=uuid.uuid4().hex[:12], started_at=self.clock())
        # Notices until now are answered by this cycle's read; later ones wait for the next.
        notice, seen = self._take_pending()
        with structlog.contextvars.bound_contextvars(cycle=report.id):
            # Targets led in a new term drop their cached index before planning uses it.
            for slot in self.targets:
                self._target_fence(slot)
            try:
                if self._leads_source() and await self._observe(report):
                    # What the observation built is garbage now: give it back.
                    release_free_memory()
            except SourceError as exc:
                report.result, report.error = "failed", str(exc)
                log.error("directory read failed; nothing changed downstream", error=str(exc))
            except FencedOut as exc:
                report.result, report.error = "failed", str(exc)
                self._fenced_out(SOURCE, exc)
            if report.result != "failed" and not self.stopping:
                await self._deliver_all(report, only)
            report.finished_at = self.clock()
            metrics.CYCLES.labels(report.result).inc()
            metrics.CYCLE_DURATION.observe(report.duration)
            if report.result != "failed":
                metrics.LAST_SUCCESS.set(report.finished_at)
            self._pending_done(report, notice, seen)
            log.info(
                "cycle finished",
                result=report.result,
                notices=len(seen) or None,
                seconds=round(report.duration, 4),
                changes=sum(report.changes.values()),
                delivered=sum(t.delivered for t in report.targets.values()),
                failed=sum(t.failed for t in report.targets.values()),
            )
        self.last_report = report
        await self._notify(report)
        return report

    # -- leader election -----------------------------------------------------------------

    def _leads_source(self) -> bool:
        """Whether this replica polls the directory now (always, without leader election).

        Gaining the source lease anew drops what the engine cached: another
        replica may have committed meanwhile.
        """
        if self.leadership is None:
            return True
        fence = self.leadership.fence(SOURCE)
        if fence != self._source_fence:
            self._source_fence = fence
            self._committed = None
            self._logins = None
            self.force_plan = True
            for slot in self.targets:
                slot.index = None
        return fence is not None

    def _target_fence(self, slot: TargetSlot) -> tuple[bool, Fence | None]:
        """Whether this replica delivers to ``slot`` now, and the fence of its writes.

        A target this replica leads in a new term is started again from the
        store (another replica may have written meanwhile), through a view
        whose every write carries the new fence.
        """
        if self.leadership is None:
            return True, None
        fence = self.leadership.fence(target_lease(slot.name))
        if fence is None:
            return False, None
        if fence != slot.fence:
            slot.fence = fence
            slot.store = FencedStore(self.store, fence)
            slot.started = False
            slot.index = None
        return True, fence

    @contextlib.contextmanager
    def _remote_writes(self, fence: Fence | None) -> Iterator[None]:
        """Requests to the application made in here check the lease first."""
        if self.leadership is None or fence is None:
            yield
            return
        token = REMOTE_WRITES.set(self.leadership.gate(fence))
        try:
            yield
        finally:
            REMOTE_WRITES.reset(token)

    def _fenced_out(self, lease: str, exc: FencedOut) -> None:
        log.warning(
            "a write was fenced out: another replica leads now; this one stops",
            lease=lease,
            error=str(exc),
        )
        if self.leadership is not None:
            self.leadership.step_down(lease, "a write was fenced out")

    async def _notify(self, report: CycleReport) -> None:
        try:
            for result in self.pm.hook.provisiond_cycle_finished(report=report):
                await await_me_maybe(result)
        except Exception:
            log.exception("a provisiond_cycle_finished hook failed")

    async def _observe(self, report: CycleReport) -> bool:
        """Read, compare, plan and commit; whether it was a large observation (a whole
        snapshot compared, or at least :data:`LARGE_CHANGE` changes)."""
        if self._committed is None:
            self._committed = await self.store.committed()
        if await self.store.approved_holds():
            self.force_plan = True
        known = None if self.force_plan else self._committed.version
        fetched = await self.source.fetch(known)
        if fetched is None:
            return False
        changed = self._proportional(fetched)
        if changed is not None:
            # The source re-read only some objects: compare and plan only those.
            screened = Screened(fetched, [])
            obs = await self._compare_changed(fetched, changed)
        else:
            screened = await self._screen(fetched)
            obs = await self._compare(screened.snapshot)
        snapshot = screened.snapshot
        report.snapshot_version = snapshot.version
        report.users, report.groups = len(snapshot.users), len(snapshot.groups)
        report.skipped, report.stale = len(snapshot.skipped), len(screened.stale)
        self._report_snapshot(screened)
        report.changes = dict(Counter(c.name for c in obs.changes))
        for name, n in report.changes.items():
            metrics.CHANGES.labels(name).inc(n)
        target_plans: dict[str, TargetPlan] = {}
        entries: list[LogEntry] = []
        kinds = provlog.by_key(obs.changes) if self.provisioning_log else {}
        for slot in self.targets:
            if slot.name not in obs.plans:
                continue
            planned_ = obs.plans[slot.name]
            scoped, held = planned_.scoped, planned_.held
            rows = [r for r in scoped.desired if r.key not in held]
            target_plans[slot.name] = TargetPlan(
                rows, scoped.released, held or None, planned_.settled
            )
            if self.provisioning_log:
                entries += provlog.planned(
                    slot.name, report.id, rows, held, kinds, report.started_at
                )
            report.targets[slot.name] = TargetReport(planned=len(rows), held=len(held))
            metrics.HELD_REMOVALS.labels(slot.name).set(len(held))
            if held:
                log.warning(
                    "mass-removal guard is holding deactivations and membership removals; "
                    f"run `provisiond approve {slot.name}` to release them",
                    target=slot.name,
                    held=len(held),
                    held_users=sum(1 for k in held if k[0] == "user"),
                    held_groups=sum(1 for k in held if k[0] == "group"),
                    active_users=scoped.active_before,
                )
        del kinds  # a first sync's changes by key: not held through the commit
        planned = any(t.planned or t.held for t in report.targets.values())
        report.result = "ok" if obs.changes or planned else "quiet"
        await self.store.commit(
            snapshot.version,
            obs.upserts,  # type: ignore[arg-type]
            obs.deletes,
            target_plans,
            fence=self._source_fence,
            log=entries,
        )
        if obs.hash_updates is not None:
            for key in obs.deletes:
                obs.hashes.pop(key, None)
            obs.hashes.update(obs.hash_updates)
        self._committed = Committed(snapshot.version, obs.hashes)
        # Proportional cycles need the committed snapshot to be the source's own.
        self._update_logins(obs, changed is not None, screened.snapshot is fetched)
        await self._record_stale(screened.stale)
        for slot in self.targets:
            if slot.name in target_plans:
                _apply_to_index(slot.index, target_plans[slot.name])
                if target_plans[slot.name].released:
                    await self._release(slot, target_plans[slot.name].released)
        self.force_plan = False
        return changed is None or len(obs.changes) >= LARGE_CHANGE

    def _proportional(self, snapshot: Snapshot) -> frozenset[Key] | None:
        """The keys to compare alone, or ``None`` when the whole snapshot must be compared.

        Only when the source says the snapshot is the committed one except for
        ``changed``, nothing forces a full plan, and screening would do nothing
        the committed snapshot does not already hold: no skipped record of a
        known object (it would be kept stale), and no changed user sharing a
        login with another.
        """
        committed = self._committed
        changed = snapshot.changed
        if (
            changed is None
            or self.force_plan
            or committed is None
            or committed.version is None
            or snapshot.base != committed.version
            or self._logins is None
        ):
            return None
        for skipped in snapshot.skipped:
            key = skipped.key
            if key is not None and key in committed.hashes and snapshot.get(*key) is None:
                return None
        users = [snapshot.users[k[1]] for k in changed if k[0] == "user" and k[1] in snapshot.users]
        if self._logins.clash(users):
            return None
        return changed

    def _update_logins(self, obs: _Observation, proportional: bool, unscreened: bool) -> None:
        if not proportional:
            users = obs.snapshot.users.values()
            clean = unscreened and not duplicate_logins(users)
            self._logins = Logins(users) if clean else None
            return
        if self._logins is None:
            return
        for old in obs.before.values():
            if isinstance(old, User):
                self._logins.remove(old)
        for _, _, obj in obs.upserts:
            if isinstance(obj, User):
                self._logins.add(obj)

    async def _compare_changed(self, snapshot: Snapshot, keys: frozenset[Key]) -> _Observation:
        """:meth:`_compare` for the ``keys`` the source re-read; the rest is as committed."""
        assert self._committed is not None
        old_hashes = self._committed.hashes
        updates: dict[Key, str] = {}
        # The new hashes over the committed ones, without copying those.
        hashes: Mapping[Key, str] = ChainMap(updates, old_hashes)
        changed: list[Key] = []
        deletes: list[Key] = []
        for key in sorted(keys):
            obj = snapshot.get(*key)
            if obj is None:
                if key in old_hashes:
                    deletes.append(key)
                continue
            h = content_hash(obj)
            if old_hashes.get(key) != h:
                updates[key] = h
                changed.append(key)
        before, changes, upserts = await self._changes(snapshot, changed, deletes, updates)
        plans: dict[str, _TargetPlanned] = {}
        if changes:
            touched = [*changed, *deletes]
            for slot in self.targets:
                plans[slot.name] = await self._plan_target(
                    slot, snapshot, hashes, (touched, before)
                )
        return _Observation(snapshot, old_hashes, changes, upserts, deletes, plans, before, updates)

    async def _release(self, slot: TargetSlot, keys: list[Key]) -> None:
        log.info("objects released from the target", target=slot.name, objects=len(keys))
        release = getattr(slot.target, "release", None)
        if release is None:
            return
        try:
            await await_me_maybe(release(keys))
        except Exception:
            log.exception("the target failed to release objects", target=slot.name)

    def _report_snapshot(self, screened: Screened) -> None:
        snapshot = screened.snapshot
        metrics.DIRECTORY_OBJECTS.labels("user").set(len(snapshot.users))
        metrics.DIRECTORY_OBJECTS.labels("group").set(len(snapshot.groups))
        by_kind = Counter(s.kind for s in snapshot.skipped)
        stale_by_kind = Counter(s.key[0] for s in screened.stale)
        for kind in ("user", "group"):
            metrics.DIRECTORY_SKIPPED.labels(kind).set(by_kind.get(kind, 0))
            metrics.DIRECTORY_STALE.labels(kind).set(stale_by_kind.get(kind, 0))
        for skipped in snapshot.skipped:
            log.warning("directory record skipped", **skipped.log_fields())
        for stale in screened.stale:
            log.warning(
                "directory record is unusable now; its last good state is kept and nothing "
                "downstream changes for it until the record is fixed or removed",
                object=stale.name,
                problems=[str(p) for p in stale.problems],
            )

    async def _screen(self, snapshot: Snapshot) -> Screened:
        """Unique logins, and last good state for known objects the source skipped."""
        assert self._committed is not None
        where = f"{self.source.kind} source"
        return await screen(snapshot, self._committed.hashes, self.store.records, where)

    async def _record_stale(self, stale: list[StaleObject]) -> None:
        """Keep the stale objects in the store, for ``status`` (written only when they change)."""
        previous = await stale_objects(self.store)
        if not stale and not previous:
            return
        doc = stale_doc(stale, previous, self.clock())
        shown = [(d["object"], d["problems"]) for d in json.loads(doc)]
        if shown != [(p.get("object"), p.get("problems")) for p in previous]:
            await self.store.set_meta(STALE_META, doc, fence=self._source_fence)

    async def stale_now(self) -> list[StaleObject]:
        """Read the directory now: the known objects it would keep at their last good state."""
        if self._committed is None:
            self._committed = await self.store.committed()
        snapshot = await self.source.fetch(None)
        assert snapshot is not None
        return (await self._screen(snapshot)).stale

    async def _compare(self, snapshot: Snapshot) -> _Observation:
        assert self._committed is not None
        old_hashes = self._committed.hashes
        hashes = snapshot.hashes()
        changed = [k for k, h in hashes.items() if old_hashes.get(k) != h]
        deletes = [k for k in old_hashes if k not in hashes]
        _, changes, upserts = await self._changes(snapshot, changed, deletes, hashes)
        plans: dict[str, _TargetPlanned] = {}
        if changes or self.force_plan:
            for slot in self.targets:
                plans[slot.name] = await self._plan_target(slot, snapshot, hashes)
        return _Observation(snapshot, hashes, changes, upserts, deletes, plans)

    async def _changes(
        self,
        snapshot: Snapshot,
        changed: list[Key],
        deletes: list[Key],
        hashes: Mapping[Key, str],
    ) -> tuple[dict[Key, DirectoryObject], list[Change], list[tuple[Key, str, object]]]:
        """What ``changed`` (in ``snapshot``, hashed in ``hashes``) and ``deletes`` change.

        Returns their committed records, the changes in delivery order and the
        upserts to commit.
        """
        assert self._committed is not None
        old_hashes = self._committed.hashes
        before = await self.store.records([k for k in changed if k in old_hashes] + deletes)
        changes: list[Change] = []
        for key in changed:
            changes.extend(diff_object(before.get(key), snapshot.get(*key)))
        for key in deletes:
            changes.extend(diff_object(before.get(key), None))
        changes = delivery_order(changes)
        for change in changes:
            log.debug("directory change", change=change.name, what=describe(change))
        upserts: list[tuple[Key, str, object]] = []
        for key in changed:
            obj = snapshot.get(*key)
            assert obj is not None
            upserts.append((key, hashes[key], obj))
        return before, changes, upserts

    async def _plan_target(
        self,
        slot: TargetSlot,
        snapshot: Snapshot,
        hashes: Mapping[Key, str],
        only: tuple[list[Key], dict[Key, DirectoryObject]] | None = None,
    ) -> _TargetPlanned:
        """Plan one target; ``only``: the changed keys and their committed records."""
        if slot.index is None:
            slot.index = await self.store.target_index(slot.name)
        for ref in slot.assignment.unknown(snapshot):
            log.warning(
                "bound group matches no directory group",
                target=slot.name,
                setting=f"targets[{self.targets.index(slot)}].groups",
                group=ref,
            )
        decisions = await self.store.decisions(slot.name)
        hold = await self.store.hold(slot.name)
        # A proportional plan sees only the changed keys: held rows (never committed) and
        # rows a rejection keeps back would drop out of the hold or lapse unseen, so a
        # target with either plans in full.
        if only is None or hold is not None or decisions:
            planned = plan(snapshot, hashes, slot.assignment, slot.index)
        else:
            planned = plan_changed(snapshot, hashes, slot.assignment, slot.index, *only)
        # The operator's decisions on held keys first: a rejected row is not planned.
        decided = apply_decisions(planned, decisions, hashes)
        scoped = decided.scoped
        approved = decided.approved
        pending = frozenset[Key]()
        if hold is not None:
            approved |= hold.keys if hold.approved else frozenset()
            pending = hold.keys - approved
        losses = await self._member_losses(slot, scoped)
        held = guard(scoped, slot.settings.guard, approved, losses, pending)
        return _TargetPlanned(scoped, held, decided.settled)

    async def _member_losses(self, slot: TargetSlot, scoped: ScopedPlan) -> MemberLosses:
        """What the plan's group rows take away, from the target's recorded group rows."""
        index = slot.index
        assert index is not None
        changed = [
            r for r in scoped.desired if r.key[0] == "group" and index.hashes.get(r.key) is not None
        ]
        if not changed:
            return NO_LOSSES
        recorded = _groups(await self.store.rows(slot.name, [r.key for r in changed]))
        losing, deleted = member_losses(changed, recorded)
        known = [k for k, h in index.hashes.items() if k[0] == "group" and h is not None]
        memberships = 0
        if sum(losing.values()) >= slot.settings.guard.min_count:
            # Only then can the share matter: read every recorded group once.
            rest = [k for k in known if k not in recorded]
            recorded.update(_groups(await self.store.rows(slot.name, rest)))
            memberships = sum(len(g.members) for g in recorded.values())
        return MemberLosses(losing, deleted, memberships, len(known))

    # -- preview (``provisiond plan``) ---------------------------------------------

    async def preview(self) -> list[PlannedDelta]:
        """What the next cycle would send, without writing anything."""
        if self._committed is None:
            self._committed = await self.store.committed()
        fetched = await self.source.fetch(None)
        assert fetched is not None
        screened = await self._screen(fetched)
        self._report_snapshot(screened)
        snapshot = screened.snapshot
        hashes = snapshot.hashes()
        out: list[PlannedDelta] = []
        for slot in self.targets:
            planned_ = await self._plan_target(slot, snapshot, hashes)
            held = planned_.held
            planned = {r.key: r for r in planned_.scoped.desired}
            stored = await self.store.rows(slot.name, list(planned))
            dirty = await self.store.rows(slot.name, None)
            for key, row in planned.items():
                prev = stored.get(key)
                status = "held" if key in held else "new"
                out.append(PlannedDelta(slot.name, _delta(key, row, prev), status))
            for key, due in dirty.items():
                if key not in planned:
                    out.append(PlannedDelta(slot.name, _due_delta(due), "retry"))
        return out

    # -- delivery ------------------------------------------------------------------

    async def _deliver_all(self, report: CycleReport, only: frozenset[Key] | None) -> None:
        async with anyio.create_task_group() as tg:
            for slot in self.targets:
                leads, fence = self._target_fence(slot)
                if not leads:
                    continue  # another replica delivers to it
                target_report = report.targets.setdefault(slot.name, TargetReport())
                tg.start_soon(self._deliver, slot, target_report, fence, only)

    async def start_target(self, slot: TargetSlot) -> None:
        """Give the target its state from the store, once (the optional ``Target.start``)."""
        async with slot.start_lock:
            if slot.started:
                return
            start = getattr(slot.target, "start", None)
            if start is not None:
                await start(slot.store or self.store)
            slot.started = True

    async def periodic(self, slot: TargetSlot) -> None:
        """The target's own periodic work (the optional ``Target.periodic``), when due."""
        work = getattr(slot.target, "periodic", None)
        if work is None or self.stopping:
            return
        leads, fence = self._target_fence(slot)
        if not leads:
            return  # the target's leader does it
        with structlog.contextvars.bound_contextvars(target=slot.name), self._remote_writes(fence):
            try:
                await self.start_target(slot)
                await work()
            except FencedOut as exc:
                self._fenced_out(target_lease(slot.name), exc)
            except StoreUnavailable as exc:
                log.warning(
                    "a target's periodic work failed: the state store is unavailable",
                    error=str(exc),
                )
            except Exception:
                log.exception("a target's periodic work failed")

    async def periodic_all(self) -> None:
        """Every target's periodic work, concurrently (``sync --once`` runs it once)."""
        async with anyio.create_task_group() as tg:
            for slot in self.targets:
                tg.start_soon(self.periodic, slot)

    async def _deliver(
        self,
        slot: TargetSlot,
        report: TargetReport,
        fence: Fence | None = None,
        only: frozenset[Key] | None = None,
    ) -> None:
        with structlog.contextvars.bound_contextvars(target=slot.name), self._remote_writes(fence):
            try:
                await self._deliver_batches(slot, report, fence, only)
            except FencedOut as exc:
                self._fenced_out(target_lease(slot.name), exc)

    def _lease_too_short(self, fence: Fence | None) -> str | None:
        """Why no delivery may start now under ``fence``, or ``None`` (it may)."""
        if self.leadership is None or fence is None:
            return None
        try:
            self.leadership.gate(fence).allowance()
        except NotLeader as exc:
            return str(exc)
        return None

    def _may_start(self, fence: Fence | None) -> bool:
        why = self._lease_too_short(fence)
        if why is not None:
            log.info("no further deliveries: not the leader any more", reason=why)
        return why is None

    async def _deliver_batches(
        self,
        slot: TargetSlot,
        report: TargetReport,
        fence: Fence | None,
        only: frozenset[Key] | None = None,
    ) -> None:
        try:
            await self.start_target(slot)
        except FencedOut:
            raise
        except Exception as exc:
            # This target's state could not be loaded: it waits for the next
            # cycle, and the other targets deliver as usual.
            if isinstance(exc, StoreUnavailable):
                log.warning("the target could not start; trying again next cycle", error=str(exc))
            else:
                log.exception("the target could not start; trying again next cycle")
            report.error = f"target {slot.name} could not start: {type(exc).__name__}: {exc}"
            return
        total = (await self.store.counts(slot.name))[0] if self.progress else 0
        done = 0
        while not self.stopping and self._may_start(fence):
            now = self.clock()
            if only is None:
                rows = await self.store.due(slot.name, now, self.settings.batch_size)
            else:
                rows, only = await self._dirty_among(slot.name, only), frozenset()
            if not rows:
                break
            deltas = [_due_delta(r, self._locate(r.key)) for r in rows]
            outcomes = await self._call_target(slot, [d for d in deltas if d.changes])
            pairs = [
                (self._result(r, d, outcomes.get(d.key)), d)
                for r, d in zip(rows, deltas, strict=True)
            ]
            if self._lease_too_short(fence) is not None:
                # The lease ran low during the batch: what failed was refused unsent
                # (or cut short), and is the next leader's to deliver, not a retry.
                pairs = [(res, d) for res, d in pairs if res.ok]
            results = [res for res, _ in pairs]
            entries = self._delivery_log(slot.name, pairs, outcomes)
            # Fenced: after another replica took the target over, nothing lands.
            await self.store.record(slot.name, results, self.clock(), fence=fence, log=entries)
            done += len(results)
            if self.on_delivered is not None:
                for res, delta in pairs:
                    self.on_delivered(slot.name, delta, res, outcomes.get(delta.key))
            if self.progress is not None:
                self.progress(slot.name, done, max(total, done))
            for res, delta in pairs:
                outcome = outcomes.get(delta.key)
                kind = (
                    "ok" if res.ok else ("permanent" if outcome and outcome.permanent else "failed")
                )
                metrics.DELIVERIES.labels(slot.name, kind).inc()
                if res.ok:
                    report.delivered += 1
                else:
                    report.failed += 1
                    where = {"entry": delta.entry} if delta.entry else {}
                    log.warning(
                        "delivery failed",
                        object=f"{delta.kind}:{delta.object_id}",
                        **where,
                        attempts=delta.attempts + 1,
                        error=res.error,
                        retry_in=round(res.next_attempt_at - now, 1),
                    )
        dirty, failed = await self.store.counts(slot.name)
        report.dirty = dirty
        metrics.DIRTY_OBJECTS.labels(slot.name).set(dirty)
        metrics.FAILED_OBJECTS.labels(slot.name).set(failed)

    def _locate(self, key: Key) -> str | None:
        """Where the directory keeps the object (an LDAP DN), if the source can say.

        See :class:`~daemon.sources.base.LocatingSource`; a source that fails
        to answer costs the message its DN, never the delivery.
        """
        locate = getattr(self.source, "locate", None)
        if locate is None:
            return None
        try:
            found = locate(*key)
        except Exception:
            log.exception("the source could not locate an object", object=f"{key[0]}:{key[1]}")
            return None
        return found if isinstance(found, str) and found else None

    async def _dirty_among(self, target: str, keys: frozenset[Key]) -> list[DueRow]:
        """The dirty rows among ``keys``, due or not, in delivery order."""
        rows = [await self.store.target_object(target, key) for key in sorted(keys)]
        dirty = [r.row for r in rows if r is not None and r.dirty]
        return sorted(dirty, key=lambda r: (phase(r.key[0], r.desired is None), r.key))

    def _delivery_log(
        self, target: str, pairs: list[tuple[Result, Delta]], outcomes: dict[Key, Outcome]
    ) -> list[LogEntry]:
        """The provisioning-log entries of one delivery batch (none for unchanged rows)."""
        if not self.provisioning_log:
            return []
        cycle = structlog.contextvars.get_contextvars().get("cycle")
        now = self.clock()
        out: list[LogEntry] = []
        for res, delta in pairs:
            if not delta.changes:
                continue
            outcome = outcomes.get(delta.key)
            requests = outcome.requests if outcome is not None else ()
            out.append(
                provlog.delivered(
                    target, cycle, delta.key, delta.changes, res.ok, res.error, requests, now
                )
            )
        return out

    async def _call_target(self, slot: TargetSlot, deltas: list[Delta]) -> dict[Key, Outcome]:
        if not deltas:
            return {}
        try:
            outcomes = await slot.target.deliver(deltas)
        except FencedOut:
            raise  # the target's own store writes: another replica leads it now
        except StoreUnavailable:
            raise  # nothing could be recorded either: the cycle ends, and the next one retries
        except Exception as exc:
            # One broken plugin must not stop the others; everything retries.
            log.exception("target raised during delivery", error=f"{type(exc).__name__}: {exc}")
            error = f"target {slot.name} raised {type(exc).__name__}: {exc}"
            return {d.key: Outcome.failure(d, error) for d in deltas}
        return {(o.kind, o.object_id): o for o in outcomes or ()}

    def _result(self, row: DueRow, delta: Delta, outcome: Outcome | None) -> Result:
        now = self.clock()
        if not delta.changes:
            return Result(row.key, row.desired_hash, True, row.remote_id, None, 0.0)
        if outcome is None:
            outcome = Outcome.failure(delta, "the target returned no outcome for this object")
        if outcome.ok:
            return Result(row.key, row.desired_hash, True, outcome.remote_id, None, 0.0)
        if outcome.permanent:
            wait = self.settings.retry_max
        elif outcome.retry_after is not None:
            wait = max(0.0, outcome.retry_after)
        else:
            base = self.settings.retry_base * (2 ** min(row.attempts, 20))
            wait = min(self.settings.retry_max, base) * random.uniform(0.5, 1.0)  # noqa: S311
        return Result(
            row.key, row.desired_hash, False, outcome.remote_id, outcome.error, now + wait
        )


def _delta(key: Key, row: DesiredRow, prev: DueRow | None) -> Delta:
    written = prev.written if prev else None
    changes = tuple(diff_object(written, row.obj))
    return Delta(
        key[0],
        key[1],
        changes,
        row.obj,
        written,
        prev.remote_id if prev else None,
        prev.attempts if prev else 0,
    )


def _due_delta(row: DueRow, entry: str | None = None) -> Delta:
    return Delta(
        row.key[0],
        row.key[1],
        tuple(diff_object(row.written, row.desired)),
        row.desired,
        row.written,
        row.remote_id,
        row.attempts,
        entry,
    )


def _groups(rows: dict[Key, DueRow]) -> dict[Key, Group]:
    """The recorded desired group records among ``rows``."""
    return {k: r.desired for k, r in rows.items() if isinstance(r.desired, Group)}


def _apply_to_index(index: TargetIndex | None, target_plan: TargetPlan) -> None:
    if index is None:
        return
    for row in target_plan.desired:
        index.hashes[row.key] = row.hash
        if row.key[0] == "user":
            if row.active:
                index.active.add(row.key[1])
            else:
                index.active.discard(row.key[1])
    for key in target_plan.released:
        index.hashes.pop(key, None)
        if key[0] == "user":
            index.active.discard(key[1])
