"""Failover with real processes: ``provisiond run`` replicas on one PostgreSQL database.

Each test starts its own database on the session's private cluster
(``pg_cluster``), scim2-server behind the logging proxy, and the replicas
(``tests/ha/harness.py``). The leases are short (3 s, renewed every second)
so that ten takeovers fit in a minute; the timing argument is the same at
any scale (``docs/architecture.md``, "The timing argument"), and
``bench/takeover.py`` measures the defaults.

What every test ends with: the application holds exactly the desired users
(with their latest title), groups and memberships, nothing twice (no two
objects with one userName, externalId or displayName, and no object the
application answered 201 to twice), and no stack trace in any replica's log.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from daemon.leadership import target_lease
from tests.ha.harness import TARGET, HaWorld, ha_directory, ha_world, logged_at
from tests.pg.cluster import PgCluster

pytestmark = pytest.mark.slow

LEASE = target_lease(TARGET)
#: ha.lease_seconds and ha.renew_every of these tests.
LEASE_SECONDS = 3.0
RENEW_EVERY = 1.0
#: A leader is deposed at most a lease after its last renewal; the next tick,
#: a start-up and a slow moment of this shared machine come on top.
TAKEOVER_WITHIN = 3 * LEASE_SECONDS + 5


def assert_clean_end(world: HaWorld, timeout: float = 120.0) -> None:
    """Converged on the desired state, nothing twice, no stack trace logged."""
    world.wait_converged(timeout=timeout)
    assert world.duplicates() == {}
    twice = {key: n for key, n in world.created().items() if n > 1}
    assert twice == {}, f"created more than once: {twice}"
    assert world.tracebacks() == []


def term_of(world: HaWorld, replica_id: str) -> int:
    """The term of the lease ``replica_id`` leads, as its own status says."""
    view = world.views(TARGET).get(replica_id)
    assert view is not None and view.mine and view.term is not None, view
    return view.term


def test_kill_9_the_leader_ten_times_mid_delivery(tmp_path: Path, pg_cluster: PgCluster) -> None:
    seed = int(os.environ.get("HA_KILL_SEED") or random.SystemRandom().randrange(10**6))
    print(f"HA_KILL_SEED={seed}")  # run again with this to replay the same kill moments
    rng = random.Random(seed)
    # 2,000 people, 1,200 of them in four groups of 1,000, 400, 40 and 3. The
    # proxy adds 100 ms to each request and a replica sends at most 4 at once,
    # so the first sync takes 30 s or more: each round delivers 2 s of it at
    # most, and every kill lands while requests are in flight.
    with ha_world(
        tmp_path,
        pg_cluster,
        replicas=3,
        users=2000,
        lease_seconds=LEASE_SECONDS,
        renew_every=RENEW_EVERY,
        latency=0.1,
        scim={"max_concurrency": 4},
    ) as world:
        leader = world.wait_leader(TARGET)
        since = 0.0
        for n in range(10):
            term = term_of(world, leader)
            # Delivering: a write of this leader's, then a random moment later, the kill.
            world.first_write(since, by=leader, timeout=60)
            time.sleep(rng.uniform(0.2, 1.5))
            last = max(w.at for w in world.writes(since) if w.replica == leader)
            killed = world.kill(leader, signal.SIGKILL)
            assert killed - last < 1.0, f"kill {n + 1}: {leader} was not delivering"
            assert world.differences(limit=1), f"kill {n + 1} came after the end of the work"
            if n == 4:
                # Half-way, the leads get a new title: a change committed between kills.
                world.set_directory(
                    ha_directory(2000, title_of=lambda i: "Lead" if i % 50 == 0 else None)
                )
            successor = world.wait_leader(TARGET, other_than=leader, timeout=TAKEOVER_WITHIN)
            assert term_of(world, successor) > term
            took = world.first_write(killed, not_by=leader, timeout=TAKEOVER_WITHIN)
            assert took.replica == successor
            print(
                f"kill {n + 1}: {leader} (term {term}) -> {successor} "
                f"(term {term_of(world, successor)}) wrote after {took.at - killed:.2f} s"
            )
            # Three replicas: the killed one comes back (as a follower) while the next round runs.
            world.start(leader, wait=False)
            leader, since = successor, took.at - 0.001
        assert world.desired().titles["u-00050"] == "Lead"
        world.latency = 0.0  # the rest at full speed
        assert_clean_end(world, timeout=180)
        assert world.running() == ["r1", "r2", "r3"]  # the restarted ones did come back


def test_a_paused_leader_is_fenced_out_and_starts_no_request_once_awake(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    """SIGSTOP the leader past its lease, let the other take over, SIGCONT it.

    Asserted: the store's rows for the target are the same before and after
    the old leader woke (it recorded nothing; its write was fenced out, and
    it says so); every request of the old leader that reached the
    application after the pause had passed its lease gate before it: it
    arrived within a second of the pause (already on the wire) or within a
    second of the wake-up (frozen between the gate and the socket write), at
    most one per connection slot, and none came later; in the end nothing
    was created twice and the application holds exactly the desired state.
    Not asserted: that no request arrives after the new leader's first write
    (one frozen between the gate and the socket write does, now and then;
    see "The timing argument" in docs/architecture.md).
    """
    with ha_world(
        tmp_path,
        pg_cluster,
        replicas=2,
        users=300,
        lease_seconds=LEASE_SECONDS,
        renew_every=RENEW_EVERY,
        latency=0.05,
    ) as world:
        leader = world.wait_leader(TARGET)
        (other,) = set(world.replicas) - {leader}
        term = term_of(world, leader)
        # SIGSTOP at its 40th create, before the proxy forwards it: the
        # application makes that user while the leader sleeps.
        paused = world.pause_on(leader, 40)
        deadline = time.monotonic() + 60
        while not paused and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paused, f"{leader} never reached its 40th create"
        successor = world.wait_leader(TARGET, other_than=leader, timeout=TAKEOVER_WITHIN)
        assert successor == other and term_of(world, other) > term
        taken = world.first_write(paused[0], by=other, timeout=TAKEOVER_WITHIN)
        world.wait_converged(timeout=90)
        time.sleep(2.0)  # the new leader is idle: what the store holds is its work
        before = world.target_rows()

        resumed = world.resume(leader)
        fenced = world.wait_event(
            leader,
            "a write was fenced out: another replica leads now; this one stops",
            timeout=30,
            lease=LEASE,
        )
        assert f"{other}/" in fenced["error"]
        world.wait_event(leader, "stepped down", timeout=10, lease=LEASE)
        time.sleep(2.0)
        # The old leader recorded nothing after the takeover: the store holds the new one's work.
        assert world.target_rows() == before
        # What it sent after the pause, its lease gate had let through before it:
        # requests already on the wire (they arrive within a second of the pause),
        # and requests between the gate and the socket when the process froze, which
        # go out the moment it continues (no process can tell that it was frozen
        # between a check and a write). At most one per connection slot
        # (scim.max_concurrency, 8): once awake, past its local deadline, it lets no
        # new request and no retry through.
        token = f"Bearer {world.replicas[leader].token}"
        after_pause = [r for r in world.proxy.log if r.authorization == token and r.at > paused[0]]
        on_the_wire = [r for r in after_pause if r.at < paused[0] + 1.0]
        on_waking = [r for r in after_pause if resumed <= r.at < resumed + 1.0]
        assert len(on_the_wire) + len(on_waking) == len(after_pause) <= 8, [
            (r.method, r.path, round(r.at - paused[0], 3)) for r in after_pause
        ]
        print(
            f"{leader} paused at its 40th create; {other} wrote {taken.at - paused[0]:.2f} s "
            f"later; requests of {leader} after the pause: {len(on_the_wire)} on the wire, "
            f"{len(on_waking)} on waking {resumed - paused[0]:.2f} s later"
        )
        # It goes on as a follower, and the successor still leads.
        assert world.replicas[leader].alive()
        assert world.leader_of(TARGET) == other
        assert_clean_end(world)


def test_a_leader_whose_sessions_are_terminated_steps_down(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    with ha_world(
        tmp_path,
        pg_cluster,
        replicas=2,
        users=300,
        lease_seconds=LEASE_SECONDS,
        renew_every=RENEW_EVERY,
    ) as world:
        leader = world.wait_leader(TARGET)
        (other,) = set(world.replicas) - {leader}
        world.wait_converged(timeout=90)
        term = term_of(world, leader)

        ended = time.time()
        assert world.terminate(leader) >= 1  # its sessions carry application_name provisiond/<id>
        down = world.wait_event(leader, "stepped down", timeout=LEASE_SECONDS, lease=LEASE)
        assert logged_at(down) - ended < LEASE_SECONDS
        assert "renewing the lease failed" in down["reason"]
        assert world.wait_leader(TARGET, other_than=leader, timeout=TAKEOVER_WITHIN) == other
        assert term_of(world, other) > term
        # The new leader delivers what changes next; the old one stays a follower.
        changed = time.time()
        world.set_directory(ha_directory(300, title="Architect"))
        assert world.first_write(changed, timeout=30).replica == other
        assert world.replicas[leader].alive()
        assert [w for w in world.writes(changed) if w.replica == leader] == []
        assert_clean_end(world)


def test_postgresql_restarts_and_the_replicas_carry_on(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    with ha_world(
        tmp_path,
        pg_cluster,
        replicas=2,
        users=300,
        lease_seconds=LEASE_SECONDS,
        renew_every=RENEW_EVERY,
        latency=0.05,
        public=True,
    ) as world:
        leader = world.wait_leader(TARGET)
        world.wait_converged(timeout=90)
        # A change on its way when the database goes: half delivered, at most.
        changed = time.time()
        world.set_directory(ha_directory(300, title="Architect"))
        world.first_write(changed, by=leader, timeout=30)
        time.sleep(0.5)
        stopped = time.time()
        pg_cluster.stop()
        try:
            assert world.differences(limit=1)
            # While it is down: no replica crashes, and every listener answers.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for rid in world.replicas:
                    assert world.replicas[rid].alive(), world.replicas[rid].tail()
                    assert world.get(rid, "/healthz")[0] == 200
                    assert world.get(rid, "/readyz")[0] in (200, 503)
                    assert world.get(rid, "/api/v1/status")[0] == 200
                    assert world.get(rid, "/login", public=True)[0] in (200, 503)
                time.sleep(0.5)
        finally:
            pg_cluster.start()
        # Back: one leader per target, every replica agrees which, and nothing is lost.
        deadline = time.monotonic() + TAKEOVER_WITHIN
        holders: set[str | None] = set()
        while time.monotonic() < deadline:
            views = world.views(TARGET)
            holders = {v.holder if v else None for v in views.values()}
            if len(views) == 2 and len(holders) == 1 and world.leader_of(TARGET):
                break
            time.sleep(0.2)
        assert len(holders) == 1 and None not in holders, world.views(TARGET)
        assert len(world.source_views()) == 2 and world.source_leader() is not None
        # The leader could not renew while the database was down, so it had stepped down.
        assert world.replicas[leader].events("stepped down", after=stopped, lease=LEASE)
        assert_clean_end(world)
        assert world.get(leader, "/readyz")[0] == 200
