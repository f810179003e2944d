"""Leader election among replicas that share one store: one leader per target, with fencing.

Each replica runs one :class:`Leadership`. Every ``renew_every`` seconds it
renews the leases it holds for ``lease_seconds`` and tries to take the free
ones, all through the store's lease rows (:meth:`daemon.store.Store.acquire_lease`):

- ``source``: the replica that polls the directory and commits the snapshot;
- ``target:<name>``: the replica that delivers to that target;
- ``replica:<replica_id>``: held by each replica while it runs, so that the
  others can count the live replicas and share the targets out.

Expiry is decided by the store's clock, so replicas' clocks may disagree.
The local side keeps its own deadline on the monotonic clock, measured from
*before* it sent the renewal: the store's expiry can only be later. Past
that deadline this replica no longer counts itself the leader, whether or
not it heard back. A lease lost that way (or refused, or a renewal that
failed) is not tried again for one lease length, so another replica takes
it over.

What a leader writes to the store carries the lease's term as a fence
(:class:`daemon.store.Fence`); :meth:`Leadership.gate` is what the SCIM
transport checks before each request (:data:`daemon.runtime.REMOTE_WRITES`).
The timing argument is in ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from daemon import metrics
from daemon.runtime import RemoteWrites
from daemon.store import Fence, Lease, Store

log = structlog.get_logger("provisiond.leadership")

SOURCE = "source"
TARGET_PREFIX = "target:"
REPLICA_PREFIX = "replica:"


def target_lease(target: str) -> str:
    """The lease name of a target's leadership."""
    return f"{TARGET_PREFIX}{target}"


def new_holder(replica_id: str) -> str:
    """The holder string of this process: the replica id and a random suffix.

    A restarted process is a new holder: it waits for the lease its
    predecessor held to expire, unless that one released it on a clean stop.
    """
    return f"{replica_id}/{secrets.token_hex(4)}"


def describe_leader(lease: Lease, *, mine: bool = False) -> dict[str, Any]:
    """A live lease as the status document shows its leader (times by the store's clock)."""
    return {
        "holder": lease.holder,
        "term": lease.term,
        "since": lease.acquired_at,
        "expires_at": lease.expires_at,
        "mine": mine,
    }


def live_leader(leases: Iterable[Lease], name: str) -> dict[str, Any] | None:
    """Who leads lease ``name`` according to ``leases`` (read from the store), or ``None``."""
    row = next((x for x in leases if x.name == name and x.live), None)
    return None if row is None else describe_leader(row)


@dataclass(frozen=True, slots=True)
class Held:
    """A lease this replica holds, as of its last renewal."""

    lease: Lease
    #: Local monotonic time when it runs out for us (measured from before the renewal).
    deadline: float
    #: Local monotonic time of the last successful renewal (or the acquisition).
    renewed: float


class Leadership:
    """This replica's leases: renewing, taking free ones, stepping down.

    ``targets`` are the configured target names (the service updates it on a
    reload). ``on_gain(name)`` is called when a lease is won (the service
    starts a cycle at once). ``spread`` shares the targets out among the live
    replicas: no target lease is taken while this replica holds its fair
    share, and one above the share is given up to let another replica take
    it. A one-off command (``sync --once``) runs with ``spread=False``: it
    neither counts as a replica nor gives anything away.
    """

    def __init__(
        self,
        store: Store,
        *,
        replica_id: str,
        lease_seconds: float,
        renew_every: float,
        holder: str | None = None,
        targets: Iterable[str] = (),
        spread: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self.holder = holder or new_holder(replica_id)
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        #: No request to an application starts with less lease than this left.
        self.margin = renew_every
        self.spread = spread
        self.clock = clock
        self.on_gain: Callable[[str], None] | None = None
        self.held: dict[str, Held] = {}
        #: Lease name -> local monotonic time before which it is not tried again.
        self.backoff: dict[str, float] = {}
        #: The lease table as of the last tick.
        self.table: list[Lease] = []
        self._targets: list[str] = []
        self.targets = list(targets)
        if spread:
            metrics.SOURCE_LEADER.set(0)

    @property
    def targets(self) -> list[str]:
        """The configured target names (the service sets them again on a reload)."""
        return self._targets

    @targets.setter
    def targets(self, names: Iterable[str]) -> None:
        self._targets = list(names)
        if not self.spread:
            return
        for name in self._targets:
            # A follower says so (0), and a first change counts from 0.
            if not self.leads(target_lease(name)):
                metrics.LEADER.labels(name).set(0)
            metrics.LEADER_CHANGES.labels(name)

    # -- what the engine asks --------------------------------------------------------

    @property
    def presence(self) -> str:
        return f"{REPLICA_PREFIX}{self.replica_id}"

    def wanted(self) -> list[str]:
        names = [SOURCE, *(target_lease(t) for t in self.targets)]
        return [self.presence, *names] if self.spread else names

    def fence(self, name: str) -> Fence | None:
        """The fence of lease ``name`` while this replica holds it (local deadline not passed)."""
        held = self.held.get(name)
        if held is None or self.clock() >= held.deadline:
            return None
        return held.lease.fence

    def leads(self, name: str) -> bool:
        return self.fence(name) is not None

    def remaining(self, name: str, term: int) -> float:
        """Seconds left of lease ``name`` at ``term`` by the local clock (0: not held)."""
        held = self.held.get(name)
        if held is None or held.lease.term != term:
            return 0.0
        return held.deadline - self.clock()

    def gate(self, fence: Fence) -> RemoteWrites:
        """What requests to an application sent under ``fence`` check first."""

        def remaining() -> float:
            return self.remaining(fence.lease, fence.term)

        return RemoteWrites(fence.lease, remaining, self.margin)

    def leader(self, name: str) -> dict[str, Any] | None:
        """Who leads lease ``name`` and since when (the status document), or ``None``."""
        held = self.held.get(name)
        row: Lease | None = held.lease if held is not None and self.leads(name) else None
        if row is None:
            row = next((x for x in self.table if x.name == name and x.live), None)
        if row is None:
            return None
        return describe_leader(row, mine=row.holder == self.holder and self.leads(name))

    # -- stepping down -----------------------------------------------------------------

    def step_down(self, name: str, reason: str, *, voluntary: bool = False) -> None:
        """Stop counting lease ``name`` as ours at once; it is not tried for one lease length."""
        held = self.held.pop(name, None)
        self.backoff[name] = self.clock() + self.lease_seconds
        if held is None:
            return
        self._metrics(name, leading=False)
        if name.startswith(REPLICA_PREFIX):
            return
        (log.info if voluntary else log.warning)(
            "stepped down",
            lease=name,
            term=held.lease.term,
            holder=self.holder,
            reason=reason,
        )

    def _gained(self, name: str, lease: Lease, started: float) -> None:
        self.held[name] = Held(lease, started + self.lease_seconds, self.clock())
        self.backoff.pop(name, None)
        self._metrics(name, leading=True)
        if name.startswith(REPLICA_PREFIX):
            return
        if name.startswith(TARGET_PREFIX):
            metrics.LEADER_CHANGES.labels(name.removeprefix(TARGET_PREFIX)).inc()
        log.info("became leader", lease=name, term=lease.term, holder=self.holder)
        if self.on_gain is not None:
            self.on_gain(name)

    def _metrics(self, name: str, *, leading: bool) -> None:
        if name == SOURCE:
            metrics.SOURCE_LEADER.set(int(leading))
        elif name.startswith(TARGET_PREFIX):
            target = name.removeprefix(TARGET_PREFIX)
            metrics.LEADER.labels(target).set(int(leading))
            if leading:
                metrics.LEASE_AGE.labels(target).set_function(lambda: self._age(name))
            else:
                # Only the leases this replica holds have an age here.
                with contextlib.suppress(KeyError):
                    metrics.LEASE_AGE.remove(target)

    def _age(self, name: str) -> float:
        held = self.held.get(name)
        return 0.0 if held is None else max(0.0, self.clock() - held.renewed)

    # -- the loop ----------------------------------------------------------------------

    async def run(self, *, first: bool = True) -> None:
        """Tick every ``renew_every`` seconds until cancelled (``first``: tick at once)."""
        if not first:
            await anyio.sleep(self.renew_every)
        while True:
            started = self.clock()
            await self.tick()
            await anyio.sleep(max(0.0, started + self.renew_every - self.clock()))

    async def tick(self) -> None:
        """Renew what this replica holds, then take what is free and ours to take."""
        now = self.clock()
        for name, held in list(self.held.items()):
            if now >= held.deadline:
                self.step_down(name, "the lease ran out before it was renewed")
        for name in list(self.held):
            failed = await self._renew(name)
            if failed is not None:
                # The other leases go through the same store: one renewal that
                # failed (a lost or terminated session, say) ends them all,
                # rather than the next one winning on a fresh connection.
                for rest in list(self.held):
                    self.step_down(
                        rest, f"renewing the lease failed: {failed} (while renewing {name})"
                    )
                break
        try:
            with anyio.fail_after(self.lease_seconds):
                self.table = await self.store.leases()
        except Exception as exc:
            log.warning("reading the lease table failed", error=_describe(exc))
            return
        wanted = self.wanted()
        for name in list(self.held):
            if name not in wanted:
                await self._release(name, "the target left the configuration")
        targets = [n for n in wanted if n.startswith(TARGET_PREFIX)]
        share = self._share(len(targets))
        mine = sorted(n for n in self.held if n.startswith(TARGET_PREFIX))
        if self.spread and len(mine) > share:
            # Another replica is there to take it: let it, by no longer renewing.
            # The lease runs out by itself, after every request made under it ended.
            self.step_down(
                mine[-1],
                f"handing the target over: this replica leads {len(mine)} targets, "
                f"above its share of {share}",
                voluntary=True,
            )
        live = {x.name: x for x in self.table if x.live}
        for name in wanted:
            if name in self.held or self.backoff.get(name, 0.0) > self.clock():
                continue
            other = live.get(name)
            if other is not None and other.holder != self.holder:
                continue
            leading = sum(1 for n in self.held if n.startswith(TARGET_PREFIX))
            if name.startswith(TARGET_PREFIX) and leading >= share:
                continue
            await self._acquire(name)

    def _share(self, targets: int) -> int:
        """How many target leases this replica may hold: its fair share of the live replicas."""
        if not self.spread:
            return targets
        replicas = {
            x.holder for x in self.table if x.name.startswith(REPLICA_PREFIX) and x.live
        } | {self.holder}
        return math.ceil(targets / len(replicas))

    async def _renew(self, name: str) -> str | None:
        """Renew lease ``name``, or step down from it; what failed if the store did."""
        held = self.held[name]
        started = self.clock()
        try:
            # Never past the local deadline: by then the lease may be another's.
            with anyio.fail_after(max(0.001, held.deadline - started)):
                lease = await self.store.acquire_lease(name, self.holder, self.lease_seconds)
        except TimeoutError:
            self.step_down(name, "the renewal did not come back before the lease ran out")
            return "it did not come back before the lease ran out"
        except Exception as exc:
            self.step_down(name, f"renewing the lease failed: {_describe(exc)}")
            return _describe(exc)
        if lease is None or lease.term != held.lease.term:
            self.step_down(name, "another replica holds the lease now")
            return None
        self.held[name] = Held(lease, started + self.lease_seconds, self.clock())
        return None

    async def _acquire(self, name: str) -> None:
        started = self.clock()
        try:
            with anyio.fail_after(self.lease_seconds):
                lease = await self.store.acquire_lease(name, self.holder, self.lease_seconds)
        except Exception as exc:
            log.warning("taking a lease failed", lease=name, error=_describe(exc))
            return
        if lease is not None:
            self._gained(name, lease, started)

    async def acquire_all(self) -> list[Lease]:
        """Take every wanted lease now; the live leases of others that stood in the way."""
        self.table = await self.store.leases()
        for name in self.wanted():
            if name not in self.held:
                await self._acquire(name)
        missing = set(self.wanted()) - set(self.held)
        if not missing:
            return []
        self.table = await self.store.leases()
        return [x for x in self.table if x.name in missing and x.live]

    async def _release(self, name: str, reason: str) -> None:
        held = self.held.get(name)
        self.step_down(name, reason, voluntary=True)
        if held is None:
            return
        try:
            with anyio.fail_after(self.lease_seconds):
                await self.store.release_lease(name, self.holder, held.lease.term)
        except Exception as exc:
            log.warning("releasing a lease failed", lease=name, error=_describe(exc))

    async def release_all(self) -> None:
        """A clean stop: give every lease up now, so another replica takes over at once.

        Call it only once nothing runs under the leases any more.
        """
        for name in list(self.held):
            await self._release(name, "provisiond is stopping")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
