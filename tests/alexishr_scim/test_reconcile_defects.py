"""Reconciliation defects from issue 10 (4, 5 and 7), against scim2-server."""

from __future__ import annotations

from pathlib import Path

from daemon.model import Snapshot, make_group
from plugins.alexishr.target import AlexisHRTarget
from tests.scim.faults import Fault

from .world import BOUND, converge, person, world


def _org(*users_kw: dict[str, object]) -> Snapshot:
    users = [person(f"r{i:03d}", **kw) for i, kw in enumerate(users_kw)]
    return Snapshot.of(users, [make_group("g-app", BOUND, [u.id for u in users])])


async def test_group_repair_after_a_user_was_recreated_uses_the_current_id(
    tmp_path: Path,
) -> None:
    """Defect 4: member ids come from the current remote ids, not those of the last write."""
    async with world(tmp_path, _org({}, {}, {})) as w:
        await converge(w)
        users = w.users_by_external()
        old_id = users["r001"]["id"]
        group = w.dump("Groups")[0]
        stray = w.raw(
            "POST",
            "/Users",
            {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "x@o.example"},
        )
        w.raw(
            "PATCH",
            f"/Groups/{group['id']}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": stray["id"]}]}],
            },
        )
        w.raw("DELETE", f"/Users/{old_id}")  # deleted by hand in the application

        repaired = await w.target.reconcile()
        assert repaired.get("user_deleted") == 1
        new_id = w.users_by_external()["r001"]["id"]
        assert new_id != old_id
        members = {m["value"] for m in w.dump("Groups")[0].get("members", [])}
        ids = {u["externalId"]: u["id"] for u in w.dump("Users") if u.get("externalId")}
        assert members == set(ids.values())  # back in the group, with its new id
        assert stray["id"] not in members and old_id not in members

        before = len(w.proxy.log)
        assert await w.target.reconcile() == {}
        assert w.writes(before) == []


async def test_reconciliation_compares_case_insensitive_values_as_the_server_does(
    tmp_path: Path,
) -> None:
    """Defect 7: an e-mail with capitals is not 'repaired' on every pass."""
    snap = _org({"email": "Mixed.Case@Corp.Example", "username": "Mixed.Case"}, {})
    async with world(tmp_path, snap) as w:
        await converge(w)
        before = len(w.proxy.log)
        for _ in range(3):
            assert await w.target.reconcile() == {}
        assert w.writes(before) == []


async def test_the_last_reconciliation_is_remembered_across_restarts(tmp_path: Path) -> None:
    """Defect 5: the reconciliation timer lives in the store, not in the process."""
    now = [10_000.0]
    async with world(tmp_path, _org({}, {}), clock=lambda: now[0], reconcile_every=3600) as w:
        await converge(w)

        def listings() -> int:
            return len([r for r in w.proxy.log if r.method == "GET" and r.path == "/Users"])

        listed = listings()
        now[0] += 1800
        await w.target.reconcile_if_due()  # the first start began the period: not due yet
        assert listings() == listed

        # A new process (a restart, or `sync --once`) half an hour later still knows.
        now[0] += 1801
        again = AlexisHRTarget(
            "alexishr", w.target.options, w.target.context, clock=lambda: now[0]
        )
        try:
            await again.start(w.engine.store)
            await again.reconcile_if_due()
            assert listings() == listed + 1  # due: one period since the first start
            now[0] += 60
            await again.reconcile_if_due()
            assert listings() == listed + 1  # and not again before the next period
        finally:
            await again.aclose()


async def test_a_409_never_adopts_the_account_of_another_directory_user(tmp_path: Path) -> None:
    """Defect 6 (target side): adoption never takes over an object linked to another id."""
    first = _org({"email": "a@corp.example"})
    async with world(tmp_path, first) as w:
        await converge(w)
        a_id = w.users_by_external()["r000"]["id"]
        # r000 moves to a new address, and a new user r001 gets the old one. r000's
        # update keeps failing, so r001's create meets r000's account (409).
        w.source.set(_org({"email": "b@corp.example"}, {"email": "a@corp.example"}))
        w.proxy.script(*[Fault.SERVER_ERROR] * 40, method="PATCH", path=f"/Users/{a_id}")
        await w.engine.cycle()
        held = {u["id"]: u for u in w.dump("Users")}[a_id]
        assert held["externalId"] == "r000"  # not overwritten by r001
        problems = {p.key: p.last_error for p in await w.engine.store.problems("alexishr", 5)}
        assert "r000" in (problems.get(("user", "r001")) or "")
        w.proxy._script.clear()
        await converge(w)
        users = w.users_by_external()
        assert users["r000"]["id"] == a_id and users["r000"]["userName"] == "b@corp.example"
        assert users["r001"]["userName"] == "a@corp.example" and users["r001"]["id"] != a_id
