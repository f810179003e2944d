"""A SCIM target under leader election, against a real scim2-server.

The leader's local clock is a test clock: the test moves it past the lease
while a delivery is under way, as a paused or slow replica would find it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.leadership import Leadership, target_lease
from daemon.model import Snapshot, make_group
from daemon.store import Link, LinkChanges, TargetPlan
from tests.scim.faults import FaultProxy

from .world import BOUND, converge, person, world


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def org(n: int) -> Snapshot:
    users = [person(f"u-{i}") for i in range(n)]
    return Snapshot.of(users, [make_group("g-app", BOUND, [u.id for u in users])])


def after_first_user_create(proxy: FaultProxy, then: Any) -> None:
    """Call ``then()`` once the first ``POST /Users`` has been answered by the server."""
    forward = proxy._forward
    fired = False

    async def forwarding(request: Any, body: bytes) -> Any:
        nonlocal fired
        answer = await forward(request, body)
        if not fired and request.method == "POST" and request.path.endswith("/Users"):
            fired = True
            then()
        return answer

    proxy._forward = forwarding  # type: ignore[method-assign]


async def test_a_leader_past_its_local_deadline_sends_no_further_request(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, org(5), max_concurrency=1) as w:
        clock = Clock()
        lead = Leadership(
            w.engine.store,
            replica_id="paused",
            lease_seconds=8.0,
            renew_every=2.0,
            targets=[w.name],
            clock=clock,
        )
        await lead.tick()
        w.engine.leadership = lead
        seen: list[int] = []

        def pause() -> None:
            # The replica "wakes up" 20 s later: its lease ran out meanwhile.
            clock.now += 20.0
            seen.append(len(w.proxy.log))

        after_first_user_create(w.proxy, pause)
        report = await w.engine.cycle()
        assert seen, "the delivery never created a user"
        # Not one request after the lease ran out by the local clock.
        assert len(w.proxy.log) == seen[0]
        assert len(w.dump("Users")) == 1
        assert not lead.leads(target_lease(w.name))
        # The one user created was recorded (the store lease still held); the rest
        # was not sent and waits, due now, for the next leader, with no retry delay.
        assert report.targets[w.name].delivered == 1
        assert report.targets[w.name].failed == 0
        rows = await w.engine.store.rows(w.name, None)
        assert len(rows) == 5  # four users and the group
        assert {r.attempts for r in rows.values()} == {0}
        # The next leader (here the same replica in a new term) finishes it, no duplicate.
        await lead.release_all()
        lead.backoff.clear()
        await lead.tick()
        await converge(w)
        users = w.dump("Users")
        assert sorted(u["externalId"] for u in users) == [f"u-{i}" for i in range(5)]


async def test_a_second_start_reads_everything_again(tmp_path: Path) -> None:
    async with world(tmp_path, org(2)) as w:
        await converge(w)
        target = w.target
        await target.link.load_users()
        assert target.link.index.loaded_at is not None
        store = w.engine.store
        # Meanwhile another replica led the target, and wrote what it did.
        await store.save_links(
            w.name,
            LinkChanges(links={("user", "u-9"): Link("remote-9", {"userName": "u-9"})}),
        )
        await target.start(store)
        assert target.link.links.get("user", "u-9") == Link("remote-9", {"userName": "u-9"})
        assert target.link.links.by_remote["remote-9"] == "u-9"
        # The listing of remote users may be out of date: it is read again when needed.
        assert target.link.index.loaded_at is None
        assert target.link.index.users == {}


async def test_a_group_released_by_another_replica_is_left_alone_here(tmp_path: Path) -> None:
    async with world(tmp_path, org(2)) as w:
        await converge(w)
        store = w.engine.store
        # The replica that plans (another one) unbinds the group: its commit
        # releases it, and the store forgets the group's link with it.
        committed = await store.committed()
        assert committed.version is not None
        released = TargetPlan([], [("group", "g-app")], None)
        await store.commit(committed.version, [], [], {w.name: released})
        (group,) = w.dump("Groups")
        w.raw(
            "PATCH",
            f"/Groups/{group['id']}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "displayName", "value": "By hand"}],
            },
        )
        repaired = await w.target.reconcile()
        # No longer managed here either: the edit stays, and no link comes back.
        assert repaired == {}
        assert [g["displayName"] for g in w.dump("Groups")] == ["By hand"]
        assert w.target.link.links.get("group", "g-app") is None
        assert ("group", "g-app") not in (await store.target_links(w.name)).links
        assert w.target.link.links.get("user", "u-0") is not None  # users still managed
