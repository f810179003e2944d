"""The example directory into a real scim2-server, and the user and group lifecycle."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from daemon.model import Snapshot, make_group
from plugins.alexishr.mapping import ENTERPRISE

from .world import BOUND, KINDS, Kind, converge, example_snapshot, person, world

IN_SCOPE = {f"u-{n}" for n in range(1001, 1011)}  # u-1011 is suspended, u-9001 unbound


async def test_example_directory_is_provisioned_exactly_and_a_second_cycle_writes_nothing(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, await example_snapshot()) as w:
        await converge(w)
        users = w.users_by_external()
        assert set(users) == IN_SCOPE
        bjorn = users["u-1002"]
        assert bjorn["userName"] == "bjorn.eriksson@nordlys.example"
        assert bjorn["emails"] == [
            {"value": "bjorn.eriksson@nordlys.example", "type": "work", "primary": True}
        ]
        assert bjorn["name"] == {"givenName": "Björn", "familyName": "Eriksson"}
        assert bjorn["title"] == "Head of Engineering"
        assert bjorn["phoneNumbers"] == [{"value": "+46701234567", "type": "work"}]
        assert bjorn["active"] is True
        assert bjorn[ENTERPRISE] == {
            "employeeNumber": "1002",
            "department": "Engineering",
            "costCenter": "CC-200",
            "organization": "Nordlys AB",
        }
        assert users["u-1006"]["phoneNumbers"][0]["value"] == "+442079460958"
        assert users["u-1008"]["phoneNumbers"][0]["value"] == "+46855501012"
        for user in users.values():
            text = str(user)
            assert "manager" not in text and "division" not in text
            assert "Platform" not in text
        groups = w.dump("Groups")
        assert [g["displayName"] for g in groups] == [BOUND]
        members = {m["value"] for m in groups[0]["members"]}
        assert members == {u["id"] for u in users.values()}
        # Nothing changed: the second cycle sends nothing at all.
        before = len(w.proxy.log)
        report = await w.engine.cycle()
        assert report.result == "quiet"
        assert w.writes(before) == []
        # Reconciliation finds no drift in what was just written.
        assert await w.target.reconcile() == {}
        assert w.writes(before) == []


def _org(members: list[str], *, titles: dict[str, str] | None = None, n: int = 4) -> Snapshot:
    titles = titles or {}
    users = [person(f"p{i}", title=titles.get(f"p{i}", "Engineer")) for i in range(n)]
    return Snapshot.of(users, [make_group("g-app", BOUND, members)])


async def test_user_and_group_lifecycle(tmp_path: Path) -> None:
    everyone = ["p0", "p1", "p2", "p3"]
    now = [1000.0]
    async with world(
        tmp_path, _org(["p0", "p1"]), hard_delete_after=3600, clock=lambda: now[0]
    ) as w:
        # join a bound group -> create
        await converge(w)
        start = len(w.proxy.log)
        w.source.set(_org(["p0", "p1", "p2"]))
        await converge(w)
        assert [x for x in w.writes(start) if x.startswith("POST")] == ["POST /Users"]
        assert "p2" in w.users_by_external()

        # change title -> exactly one PATCH of the user
        start = len(w.proxy.log)
        w.source.set(_org(["p0", "p1", "p2"], titles={"p1": "CTO"}))
        await converge(w)
        p1 = w.users_by_external()["p1"]
        assert w.writes(start) == [f"PATCH /Users/{p1['id']}"]
        assert p1["title"] == "CTO"

        # leave every bound group -> active=false (and out of the group)
        w.source.set(_org(["p0", "p1"], titles={"p1": "CTO"}))
        await converge(w)
        p2 = w.users_by_external()["p2"]
        assert p2["active"] is False
        group = w.dump("Groups")[0]
        assert p2["id"] not in {m["value"] for m in group["members"]}

        # rejoin -> active=true
        w.source.set(_org(["p0", "p1", "p2"], titles={"p1": "CTO"}))
        await converge(w)
        assert w.users_by_external()["p2"]["active"] is True

        # removed from the directory -> deactivated, deleted after the grace
        snap = _org(["p0", "p1"], titles={"p1": "CTO"}, n=4)
        del snap.users["p2"]
        w.source.set(snap)
        report = await w.engine.cycle()
        assert w.users_by_external()["p2"]["active"] is False
        assert report.targets["alexishr"].dirty == 1  # waiting for the grace
        problems = await w.engine.store.problems("alexishr", 5)
        assert "grace period" in (problems[0].last_error or "")
        now[0] += 3601
        await converge(w)
        assert "p2" not in w.users_by_external()

        # rename the group -> pushed
        renamed = _org(["p0", "p1"], titles={"p1": "CTO"})
        del renamed.users["p2"]
        renamed.groups["g-app"] = msgspec.structs.replace(renamed.groups["g-app"], name="AHR")
        w.engine.targets[0].settings.groups.append("AHR")
        w.source.set(renamed)
        await converge(w)
        assert [g["displayName"] for g in w.dump("Groups")] == ["AHR"]
        del everyone


async def test_150_members_go_as_chunked_patch_adds(tmp_path: Path) -> None:
    users = [person(f"m{i:03d}") for i in range(150)]
    snap = Snapshot.of(users[:1], [make_group("g-app", BOUND, ["m000"])])
    async with world(tmp_path, snap, membership_chunk=50) as w:
        await converge(w)
        start = len(w.proxy.log)
        w.source.set(Snapshot.of(users, [make_group("g-app", BOUND, [u.id for u in users])]))
        await converge(w)
        group = w.dump("Groups")[0]
        assert len(group["members"]) == 150
        patches = [r for r in w.proxy.log[start:] if r.method == "PATCH" and "/Groups/" in r.path]
        assert len(patches) == 3  # 149 new members in chunks of 50
        for request in patches:
            body = msgspec.json.decode(request.body)
            assert [op["op"] for op in body["Operations"]] == ["add"]
            assert body["Operations"][0]["path"] == "members"
        assert not [r for r in w.proxy.log if r.method == "PUT"]


async def test_an_existing_user_with_the_same_email_is_adopted(tmp_path: Path) -> None:
    snap = Snapshot.of([person("a1", title="Lead")], [make_group("g-app", BOUND, ["a1"])])
    async with world(tmp_path, snap) as w:
        existing = w.raw(
            "POST",
            "/Users",
            {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "a1@corp.example",
                "title": "Old title",
            },
        )
        await converge(w)
        users = w.dump("Users")
        assert len(users) == 1
        assert users[0]["id"] == existing["id"]
        assert users[0]["title"] == "Lead"
        assert users[0]["externalId"] == "a1"


async def test_409_on_create_adopts(tmp_path: Path) -> None:
    # The listing says "no such user", then the user appears: the POST meets 409.
    snap = Snapshot.of([person("a2")], [make_group("g-app", BOUND, ["a2"])])
    async with world(tmp_path, snap) as w:
        await w.target._ready()
        await w.target.link.load_users()
        w.raw(
            "POST",
            "/Users",
            {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "A2@corp.example",
            },
        )
        await converge(w)
        assert len(w.dump("Users")) == 1
        assert [r.status for r in w.proxy.requests("POST", "/Users")] == [409]


async def test_a_user_deleted_by_hand_is_created_again_on_update(tmp_path: Path) -> None:
    snap = Snapshot.of([person("d1")], [make_group("g-app", BOUND, ["d1"])])
    async with world(tmp_path, snap) as w:
        await converge(w)
        old = w.users_by_external()["d1"]["id"]
        w.raw("DELETE", f"/Users/{old}")
        w.source.set(Snapshot.of([person("d1", title="New")], [make_group("g-app", BOUND, ["d1"])]))
        await converge(w)
        again = w.users_by_external()["d1"]
        assert again["id"] != old and again["title"] == "New"
        assert len(w.dump("Users")) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_revoked_token_stops_the_rest_of_the_batch(tmp_path: Path, kind: Kind) -> None:
    first = person("r000")
    async with world(
        tmp_path,
        Snapshot.of([first], [make_group("g", BOUND, [first.id])]),
        max_concurrency=4,
        token_rotation_wait=0,
        kind=kind,
    ) as w:
        await converge(w)
        # The token is revoked in the application; 60 new people arrive in one batch.
        w.proxy.required_token = "a-token-provisiond-does-not-have"
        users = [first, *(person(f"r{i:03d}") for i in range(1, 61))]
        w.source.set(Snapshot.of(users, [make_group("g", BOUND, [u.id for u in users])]))
        since = len(w.proxy.log)
        report = await w.engine.cycle()
        refused = [r for r in w.proxy.log[since:] if r.status == 401]
        # The listing for matching meets the refusal first; then only the deltas
        # already in progress do, and the rest of the batch is held back.
        assert "filter" not in refused[0].query
        assert 1 <= len(refused[1:]) <= 4
        assert report.targets[w.name].failed == 61
