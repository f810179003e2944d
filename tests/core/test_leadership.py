"""Leader election: the per-replica lease manager, and the engine under it, on a real SQLite file.

Each replica has its own store connection on one database, as two daemon
processes on one host would. The manager's local clock is a test clock where
the test must move time itself; the store's clock (which decides expiry) is
real, so leases the store must see expire are short.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from daemon import metrics
from daemon.config import EngineSettings
from daemon.engine import Engine, TargetSlot
from daemon.leadership import SOURCE, Leadership
from daemon.plugins import plugin_manager
from daemon.runtime import NotLeader
from daemon.store import Fence, FencedOut, Lease, Store, StoreUnavailable
from daemon.store.fenced import FencedStore
from daemon.store.sqlite import SqliteStore
from daemon.targets.base import Delta, Outcome

from .support import BOUND, FedSource, RecordingTarget, org, slot


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Stores = Callable[[], Awaitable[Store]]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """Opens connections to one SQLite file (one per replica) and closes them afterwards."""
    opened: list[SqliteStore] = []

    async def open_one() -> Store:
        store = SqliteStore(tmp_path / "state.db")
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.aclose()


def manager(
    store: Store,
    replica: str,
    targets: Sequence[str] = ("a",),
    *,
    clock: Callable[[], float] | None = None,
    lease: float = 8.0,
    renew: float = 2.0,
) -> Leadership:
    kw = {} if clock is None else {"clock": clock}
    return Leadership(
        store,
        replica_id=replica,
        lease_seconds=lease,
        renew_every=renew,
        targets=targets,
        **kw,  # type: ignore[arg-type]
    )


def leading(lead: Leadership) -> set[str]:
    return {name for name in lead.held if lead.leads(name)}


def gauge(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


class TestManager:
    async def test_a_lone_replica_takes_every_lease_at_its_first_tick(
        self, stores: Stores
    ) -> None:
        clock = Clock()
        lead = manager(await stores(), "r1", ("m-a", "m-b"), clock=clock)
        gained: list[str] = []
        lead.on_gain = gained.append
        changes = gauge("provisiond_leader_changes_total", target="m-a") or 0.0
        with capture_logs() as logged:
            await lead.tick()
        assert leading(lead) == {"replica:r1", SOURCE, "target:m-a", "target:m-b"}
        assert gained == [SOURCE, "target:m-a", "target:m-b"]
        assert lead.fence("target:m-a") == Fence("target:m-a", lead.holder, 1)
        became = [e for e in logged if e["event"] == "became leader"]
        assert {(e["lease"], e["term"], e["holder"]) for e in became} == {
            (SOURCE, 1, lead.holder),
            ("target:m-a", 1, lead.holder),
            ("target:m-b", 1, lead.holder),
        }
        assert gauge("provisiond_leader", target="m-a") == 1
        assert gauge("provisiond_source_leader") == 1
        assert gauge("provisiond_leader_changes_total", target="m-a") == changes + 1
        clock.advance(1.5)
        assert gauge("provisiond_lease_age_seconds", target="m-a") == pytest.approx(1.5, abs=0.1)
        assert lead.holder.startswith("r1/") and lead.holder != "r1/"

    async def test_renewals_keep_the_term_and_push_the_local_deadline(
        self, stores: Stores
    ) -> None:
        clock = Clock()
        lead = manager(await stores(), "r1", clock=clock)
        await lead.tick()
        for _ in range(5):
            clock.advance(2.0)
            await lead.tick()
        assert lead.fence("target:a") == Fence("target:a", lead.holder, 1)
        assert lead.remaining("target:a", 1) == pytest.approx(8.0, abs=0.1)
        assert lead.remaining("target:a", 2) == 0.0
        assert gauge("provisiond_lease_age_seconds", target="a") == pytest.approx(0.0, abs=0.1)

    async def test_past_its_local_deadline_a_replica_leads_nothing_and_waits_a_lease(
        self, stores: Stores
    ) -> None:
        clock = Clock()
        lead = manager(await stores(), "r1", clock=clock)
        await lead.tick()
        fence = lead.fence("target:a")
        assert fence is not None
        gate = lead.gate(fence)
        assert gate.allowance() == pytest.approx(8.0)
        clock.advance(6.5)
        with pytest.raises(NotLeader, match="under 2s"):
            gate.allowance()  # less than the margin left: no request may start
        assert lead.leads("target:a")  # still the leader, for what is in flight
        clock.advance(1.5)
        # The local deadline passed: no leader at once, without waiting for a tick.
        assert not lead.leads("target:a") and lead.fence(SOURCE) is None
        with pytest.raises(NotLeader, match="lost"):
            gate.allowance()
        with capture_logs() as logged:
            await lead.tick()
        down = [e for e in logged if e["event"] == "stepped down"]
        assert {e["lease"] for e in down} == {SOURCE, "target:a"}
        assert {e["log_level"] for e in down} == {"warning"}
        assert gauge("provisiond_leader", target="a") == 0
        assert gauge("provisiond_lease_age_seconds", target="a") is None
        # It does not try again for one lease length, so another replica can take over.
        clock.advance(7.0)
        await lead.tick()
        assert leading(lead) == set()
        clock.advance(1.5)
        await lead.tick()
        assert {SOURCE, "target:a"} <= leading(lead)

    async def test_a_renewal_that_fails_steps_down_at_once(self, stores: Stores) -> None:
        store = await stores()
        lead = manager(store, "r1", clock=Clock())
        await lead.tick()
        await store.aclose()  # the database is gone
        with capture_logs() as logged:
            await lead.tick()
        assert leading(lead) == set()
        reasons = {e["lease"]: e["reason"] for e in logged if e["event"] == "stepped down"}
        assert "renewing the lease failed" in reasons["target:a"]

    async def test_one_failed_renewal_steps_down_from_every_lease(self, stores: Stores) -> None:
        # A session the server ended fails one call of the store (PostgreSQL
        # reports it once, then connects anew): the leases renewed after it,
        # through the same store, are given up too.
        store = await stores()
        lead = manager(store, "r1", ("a", "b"), clock=Clock())
        await lead.tick()
        assert leading(lead) == {"replica:r1", SOURCE, "target:a", "target:b"}
        renew = store.acquire_lease
        lost = ["PostgreSQL at db:5432/state: the server closed a connection of this store"]

        async def once(name: str, holder: str, seconds: float) -> Lease | None:
            if lost:
                raise StoreUnavailable(lost.pop())
            return await renew(name, holder, seconds)

        store.acquire_lease = once  # type: ignore[method-assign]
        with capture_logs() as logged:
            await lead.tick()
        assert leading(lead) == set()
        reasons = {e["lease"]: e["reason"] for e in logged if e["event"] == "stepped down"}
        assert set(reasons) == {SOURCE, "target:a", "target:b"}
        assert all("the server closed a connection" in r for r in reasons.values())
        assert all(e["log_level"] == "warning" for e in logged if e["event"] == "stepped down")
        # None is taken again for a lease length, so another replica takes them over.
        await lead.tick()
        assert leading(lead) == set()

    async def test_a_deposed_replica_steps_down_and_the_new_leader_has_the_next_term(
        self, stores: Stores
    ) -> None:
        old = manager(await stores(), "old", lease=0.4, renew=0.1)
        new = manager(await stores(), "new", lease=8.0, renew=2.0)
        await old.tick()
        assert old.leads("target:a")
        fence = old.fence("target:a")
        await anyio.sleep(0.5)  # the old one is paused past its lease
        await new.tick()
        assert new.fence("target:a") == Fence("target:a", new.holder, 2)
        assert new.fence(SOURCE) == Fence(SOURCE, new.holder, 2)
        with capture_logs() as logged:
            await old.tick()
        assert not old.leads("target:a") and not old.leads(SOURCE)
        assert "target:a" in old.backoff
        # What the old one would write now lands nowhere.
        assert fence is not None
        with pytest.raises(FencedOut):
            await old.store.set_target_meta("a", "k", "v", fence=fence)
        assert old.leader("target:a") == {
            "holder": new.holder,
            "term": 2,
            "since": pytest.approx(new.held["target:a"].lease.acquired_at),
            "expires_at": pytest.approx(new.held["target:a"].lease.expires_at, abs=1.0),
            "mine": False,
        }
        assert {e["event"] for e in logged} >= {"stepped down"}

    async def test_a_released_lease_is_taken_over_at_once(self, stores: Stores) -> None:
        one = manager(await stores(), "one")
        two = manager(await stores(), "two")
        await one.tick()
        await two.tick()
        assert not two.leads(SOURCE)
        with capture_logs() as logged:
            await one.release_all()
        assert leading(one) == set()
        assert {e["log_level"] for e in logged if e["event"] == "stepped down"} == {"info"}
        await two.tick()
        assert two.fence(SOURCE) == Fence(SOURCE, two.holder, 2)
        assert two.leads("target:a")

    async def test_targets_are_shared_out_among_the_live_replicas(self, stores: Stores) -> None:
        lease, renew = 0.6, 0.15
        one = manager(await stores(), "one", ("x", "y"), lease=lease, renew=renew)
        two = manager(await stores(), "two", ("x", "y"), lease=lease, renew=renew)
        await one.tick()  # alone so far: it takes both
        assert {"target:x", "target:y"} <= leading(one)
        with anyio.fail_after(10):
            while True:
                await two.tick()
                await one.tick()
                mine = {n for n in leading(one) if n.startswith("target:")}
                theirs = {n for n in leading(two) if n.startswith("target:")}
                if len(mine) == len(theirs) == 1:
                    break
                await anyio.sleep(renew)
        assert mine | theirs == {"target:x", "target:y"}
        # Stable: no more hand-overs once each replica has its share.
        for _ in range(6):
            await anyio.sleep(renew)
            await one.tick()
            await two.tick()
        assert {n for n in leading(one) if n.startswith("target:")} == mine
        assert {n for n in leading(two) if n.startswith("target:")} == theirs

    async def test_a_command_takes_every_lease_or_names_who_holds_them(
        self, stores: Stores
    ) -> None:
        replica = manager(await stores(), "daemon", ("a", "b"))
        await replica.tick()
        command = Leadership(
            await stores(),
            replica_id="cli",
            lease_seconds=8.0,
            renew_every=2.0,
            targets=["a", "b"],
            spread=False,
        )
        held = await command.acquire_all()
        assert {x.name for x in held} == {SOURCE, "target:a", "target:b"}
        assert {x.holder for x in held} == {replica.holder}
        await replica.release_all()
        assert await command.acquire_all() == []
        assert leading(command) == {SOURCE, "target:a", "target:b"}  # no replica lease


# -- the engine under leader election ---------------------------------------------------


class StartingTarget(RecordingTarget):
    """Records the store view each start got."""

    def __init__(self, name: str = "app") -> None:
        super().__init__(name)
        self.starts: list[Store] = []

    async def start(self, store: Store) -> None:
        self.starts.append(store)


class FlushingTarget(RecordingTarget):
    """Writes its own value to the store after each delivery, as a SCIM target writes links."""

    def __init__(self, name: str = "app") -> None:
        super().__init__(name)
        self.store: Store | None = None

    async def start(self, store: Store) -> None:
        self.store = store

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        outcomes = await super().deliver(deltas)
        assert self.store is not None
        await self.store.set_target_meta(self.name, "delivered", str(len(self.calls)))
        return outcomes


def engine_on(
    store: Store, source: FedSource, slots: list[TargetSlot], lead: Leadership | None
) -> Engine:
    return Engine(
        source,
        slots,
        store,
        plugin_manager(entry_points=False),
        EngineSettings(),
        leadership=lead,
    )


class TestEngine:
    async def test_only_the_leader_polls_commits_and_delivers(self, stores: Stores) -> None:
        snapshot = org(3)
        sources = FedSource(snapshot), FedSource(snapshot)
        targets = RecordingTarget(), RecordingTarget()
        stores_ = await stores(), await stores()
        leads = [manager(s, f"r{i}", ("app",)) for i, s in enumerate(stores_)]
        engines = [
            engine_on(stores_[i], sources[i], [slot(targets[i], [BOUND])], leads[i])
            for i in range(2)
        ]
        for lead in leads:
            await lead.tick()
        assert leads[0].leads(SOURCE) and leads[0].leads("target:app")
        follower = await engines[1].cycle()
        assert sources[1].fetches == 0 and targets[1].calls == []
        assert follower.result == "quiet" and follower.targets == {}
        report = await engines[0].cycle()
        assert report.targets["app"].delivered == 4
        assert set(targets[0].holding) == {
            ("user", "u0"),
            ("user", "u1"),
            ("user", "u2"),
            ("group", "g-app"),
        }
        await engines[1].cycle()
        assert sources[1].fetches == 0 and targets[1].calls == []

    async def test_the_target_leader_delivers_what_another_replica_committed(
        self, stores: Stores
    ) -> None:
        snapshot = org(2)
        poller_store, deliverer_store = await stores(), await stores()
        poller = manager(poller_store, "poller", ())  # wants the source only
        deliverer = manager(deliverer_store, "deliverer", ("app",))
        await poller.tick()
        await deliverer.tick()
        assert poller.leads(SOURCE) and not deliverer.leads(SOURCE)
        assert deliverer.leads("target:app")
        idle, busy = RecordingTarget(), RecordingTarget()
        source = FedSource(snapshot)
        polling = engine_on(poller_store, source, [slot(idle, [BOUND])], poller)
        delivering = engine_on(
            deliverer_store, FedSource(snapshot), [slot(busy, [BOUND])], deliverer
        )
        report = await polling.cycle()
        assert report.targets["app"].planned == 3 and idle.calls == []
        assert await poller_store.counts("app") == (3, 0)
        report = await delivering.cycle()
        assert report.targets["app"].delivered == 3
        assert len(busy.holding) == 3
        assert await poller_store.counts("app") == (0, 0)
        # A change: planned by the poller, delivered by the other.
        source.set(org(3))
        await polling.cycle()
        await delivering.cycle()
        assert ("user", "u2") in busy.holding and idle.calls == []

    @pytest.mark.parametrize("kind", [RecordingTarget, FlushingTarget])
    async def test_a_write_after_a_takeover_is_fenced_out_and_the_leader_stops(
        self, stores: Stores, kind: type[RecordingTarget]
    ) -> None:
        # RecordingTarget: the engine's record is fenced. FlushingTarget: the
        # target's own write (through the store view it was started with) is.
        # The deposed leader still believes it leads (its clock stands still),
        # while the store saw its lease expire and another replica take it.
        poller_store, old_store, new_store = await stores(), await stores(), await stores()
        poller = manager(poller_store, "poller", ())
        await poller.tick()
        old = manager(old_store, "old", ("app",), clock=Clock(), lease=0.3, renew=0.1)
        await old.tick()
        target = kind()
        old_engine = engine_on(old_store, FedSource(org(1)), [slot(target, [BOUND])], old)
        polling = engine_on(
            poller_store, FedSource(org(3)), [slot(RecordingTarget(), [BOUND])], poller
        )
        await polling.cycle()
        await anyio.sleep(0.4)
        new = manager(new_store, "new", ("app",))
        await new.tick()
        assert new.fence("target:app") == Fence("target:app", new.holder, 2)
        assert old.leads("target:app")
        with capture_logs() as logged:
            report = await old_engine.cycle()
        # It delivered (a request already on its way), but recorded nothing of it.
        assert len(target.calls) == 1
        assert report.targets["app"].delivered == 0
        assert await new_store.counts("app") == (4, 0)
        assert await new_store.target_meta("app", "delivered") is None
        fenced = [e for e in logged if e["event"].startswith("a write was fenced out")]
        assert len(fenced) == 1 and fenced[0]["lease"] == "target:app"
        assert "new/" in fenced[0]["error"]
        assert not old.leads("target:app")
        await old_engine.cycle()
        assert len(target.calls) == 1  # no further deliveries

    async def test_gaining_the_source_lease_again_drops_the_cached_snapshot(
        self, stores: Stores
    ) -> None:
        store_a, store_b = await stores(), await stores()
        a, b = manager(store_a, "a", ()), manager(store_b, "b", ())
        source_a, source_b = FedSource(org(2)), FedSource(org(2))
        engine_a = engine_on(store_a, source_a, [slot(RecordingTarget(), [BOUND])], a)
        engine_b = engine_on(store_b, source_b, [slot(RecordingTarget(), [BOUND])], b)
        await a.tick()
        assert (await engine_a.cycle()).changes == {"user_added": 2, "group_added": 1}
        await a.release_all()
        await b.tick()
        source_a.set(org(3))
        source_b.set(org(3))
        assert (await engine_b.cycle()).changes == {"user_added": 1, "members_added": 1}
        await b.release_all()
        a.backoff.clear()  # released cleanly, not lost: no reason to wait
        await a.tick()
        assert a.fence(SOURCE) == Fence(SOURCE, a.holder, 3)
        # Compared with what b committed, not with what a committed before.
        report = await engine_a.cycle()
        assert report.changes == {} and report.result == "quiet"

    async def test_gaining_a_target_again_starts_it_again_from_the_store(
        self, stores: Stores
    ) -> None:
        store = await stores()
        lead = manager(store, "r", ("app",))
        target = StartingTarget()
        eng = engine_on(store, FedSource(org(1)), [slot(target, [BOUND])], lead)
        await lead.tick()
        await eng.cycle()
        await eng.cycle()
        assert len(target.starts) == 1
        first = target.starts[0]
        assert isinstance(first, FencedStore) and first.fence.term == 1
        await lead.release_all()
        await eng.cycle()
        lead.backoff.clear()
        await lead.tick()
        await eng.cycle()
        assert len(target.starts) == 2
        second = target.starts[1]
        assert isinstance(second, FencedStore) and second.fence.term == 2
        assert eng.targets[0].index is not None  # planned again from the store

    async def test_periodic_work_runs_on_the_target_leader_only(self, stores: Stores) -> None:
        runs: list[str] = []

        class Periodic(RecordingTarget):
            async def periodic(self) -> None:
                runs.append(self.name)

        leader_store, other_store = await stores(), await stores()
        leader = manager(leader_store, "leader", ("app",))
        other = manager(other_store, "other", ("app",))
        await leader.tick()
        await other.tick()
        leading_engine = engine_on(
            leader_store, FedSource(org(1)), [slot(Periodic(), [BOUND])], leader
        )
        other_engine = engine_on(other_store, FedSource(org(1)), [slot(Periodic(), [BOUND])], other)
        await other_engine.periodic_all()
        assert runs == []
        await leading_engine.periodic_all()
        assert runs == ["app"]

    async def test_without_leader_election_nothing_is_fenced(self, stores: Stores) -> None:
        store = await stores()
        target = StartingTarget()
        eng = engine_on(store, FedSource(org(1)), [slot(target, [BOUND])], None)
        report = await eng.cycle()
        assert report.targets["app"].delivered == 2
        assert target.starts == [store]
        assert await store.leases() == []
