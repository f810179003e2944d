"""The HA harness itself: its convergence and duplicate checks, then a small real run.

The first test needs no daemon: it fills scim2-server by hand and shows that
:meth:`~tests.ha.harness.HaWorld.differences` and
:meth:`~tests.ha.harness.HaWorld.duplicates` see what they must (so the big
HA tests built on them can fail). The second starts two replicas on the
real leadership code: one leads, the other takes over after a SIGKILL and
delivers what changed meanwhile.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.ha.harness import BOUND_GROUPS, TARGET, HaWorld, ha_directory, ha_world
from tests.pg.cluster import PgCluster


def scim(base: str, method: str, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={
            "Content-Type": "application/scim+json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def user_body(external_id: str, user_name: str, title: str | None = None) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "externalId": external_id,
        "active": True,
        **({"title": title} if title else {}),
    }


def fill_by_hand(world: HaWorld) -> dict[str, str]:
    """POST the desired state straight to the server; return externalId → server id."""
    want = world.desired()
    ids = {
        ext: scim(world.upstream, "POST", "/Users", user_body(ext, name, want.titles.get(ext)))[
            "id"
        ]
        for ext, name in want.users.items()
    }
    for ext, (name, members) in want.groups.items():
        body = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": name,
            "externalId": ext,
            "members": [{"value": ids[m]} for m in sorted(members)],
        }
        scim(world.upstream, "POST", "/Groups", body)
    return ids


def test_directory_groups_differ_in_size_and_one_is_unbound() -> None:
    data = ha_directory(200)
    sizes = {g["name"]: len(g["members"]) for g in data["groups"]}
    assert sizes == {"Engineering": 100, "Sales": 40, "Leads": 4, "Board": 3, "Contractors": 29}
    bound = {m for g in data["groups"] if g["id"] in BOUND_GROUPS for m in g["members"]}
    assert 0 < len(bound) < 200  # some people are not provisioned at all


def test_checks_see_missing_extra_and_duplicate_objects(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    with ha_world(tmp_path, pg_cluster, replicas=2, users=60, start=False) as world:
        want = world.desired()
        assert 0 < len(want.users) < 60 and len(want.groups) == len(BOUND_GROUPS)
        empty = world.differences(limit=1000)
        assert sum("missing or inactive" in p for p in empty) == len(want.users)
        assert sum(p.endswith(" missing") and p.startswith("group") for p in empty) == len(
            want.groups
        )
        with pytest.raises(AssertionError, match="not converged within"):
            world.wait_converged(timeout=0.5, every=0.1)

        fill_by_hand(world)
        assert world.differences() == []
        assert world.wait_converged(timeout=5) < 5
        assert world.duplicates() == {}
        # A new title that did not arrive is a difference too.
        world.set_directory(ha_directory(60, title="Architect"))
        late = world.differences(limit=1000)
        assert len(late) == len(want.users)
        assert all(p.endswith("title 'Engineer', want 'Architect'") for p in late)
        world.set_directory(ha_directory(60))

        # A second account for one person, made through the proxy with r2's token.
        ext = sorted(want.users)[0]
        since = time.time()
        scim(world.proxy.url, "POST", "/Users", user_body(ext, "twin@corp.example"),
             world.replicas["r2"].token)  # fmt: skip
        assert world.duplicates() == {"user externalId": [ext]}
        assert f"1 users held more than once, e.g. ['{ext}']" in world.differences()
        (write,) = world.writes(since)
        assert (write.replica, write.method, write.path) == ("r2", "POST", "/Users")
        assert world.first_write(since, not_by="r1", timeout=1) == write
        assert world.created() == {("/Users", ext): 1}
        scim(world.proxy.url, "POST", "/Users", user_body(ext, "triplet@corp.example"),
             world.replicas["r1"].token)  # fmt: skip
        assert world.created() == {("/Users", ext): 2}

    with ha_world(tmp_path / "2", pg_cluster, replicas=1, users=60, start=False) as world:
        fill_by_hand(world)
        # A group the target is not bound to must not be there.
        scim(world.upstream, "POST", "/Groups", {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Contractors", "externalId": "g-contractors",
        })  # fmt: skip
        assert world.differences() == ["group g-contractors (Contractors) not wanted"]


@pytest.mark.slow
def test_two_replicas_one_leader_takeover_and_convergence(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    with ha_world(tmp_path, pg_cluster, replicas=2, users=200) as world:
        leader = world.wait_leader(TARGET)
        world.wait_converged(timeout=120)
        assert world.duplicates() == {}
        assert {w.replica for w in world.writes()} <= {"r1", "r2"}
        term = world.term_of(TARGET)

        killed = world.kill(leader, signal.SIGKILL)
        successor = world.wait_leader(TARGET, other_than=leader, timeout=30)
        assert (world.term_of(TARGET) or 0) > (term or 0)
        # Work after the kill: everyone gets a new title, delivered by the successor.
        data = ha_directory(200, title="Architect")
        world.set_directory(data)
        first = world.first_write(killed, timeout=60)
        assert first.replica == successor
        world.wait_converged(timeout=120)
        assert world.duplicates() == {}

        world.restart(leader)
        time.sleep(2 * world.renew_every)
        assert world.leader_of(TARGET) == successor
        assert world.source_leader() in {"r1", "r2"}
