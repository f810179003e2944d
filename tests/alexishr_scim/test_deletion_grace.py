"""A user removed from the directory while ``hard_delete_after`` runs: deactivated, and kept so.

Until the grace period ends the account is deactivated but still there, and
what the target recorded as written must say so: reconciliation then leaves
it deactivated (it used to reactivate it, and re-create it when deleted by
hand).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.model import Snapshot, make_group

from .world import BOUND, PEERS, Peer, World, converge, person, world

GRACE = 3600.0


def _org(members: list[str]) -> Snapshot:
    users = [person(uid) for uid in members]
    return Snapshot.of(users, [make_group("g-app", BOUND, members)])


async def _remove_p1(w: World) -> str:
    """Remove ``p1`` from the directory; its remote id (deactivated, deletion pending)."""
    w.source.set(_org(["p0"]))
    report = await w.engine.cycle()
    assert report.targets["alexishr"].dirty == 1  # waiting for the grace
    p1 = w.users_by_external()["p1"]
    assert p1["active"] is False
    return str(p1["id"])


@pytest.mark.parametrize("peer", PEERS)
async def test_reconciliation_keeps_a_user_pending_deletion_deactivated(
    tmp_path: Path, peer: Peer
) -> None:
    now = [1000.0]
    async with world(
        tmp_path, _org(["p0", "p1"]), peer=peer, hard_delete_after=GRACE, clock=lambda: now[0]
    ) as w:
        await converge(w)
        remote_id = await _remove_p1(w)
        mark = len(w.proxy.log)
        assert await w.target.reconcile() == {}
        assert w.writes(mark) == []
        assert w.raw("GET", f"/Users/{remote_id}")["active"] is False

        # Reactivated by hand during the grace: reconciliation deactivates it again.
        w.raw(
            "PATCH",
            f"/Users/{remote_id}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "active", "value": True}],
            },
        )
        assert await w.target.reconcile() == {"user_reactivated": 1}
        assert w.raw("GET", f"/Users/{remote_id}")["active"] is False

        # Deleted by hand during the grace: not created again.
        w.raw("DELETE", f"/Users/{remote_id}")
        mark = len(w.proxy.log)
        assert await w.target.reconcile() == {}
        assert w.writes(mark) == []
        assert "p1" not in w.users_by_external()


async def test_a_user_back_in_the_directory_during_the_grace_is_reactivated(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    async with world(
        tmp_path, _org(["p0", "p1"]), hard_delete_after=GRACE, clock=lambda: now[0]
    ) as w:
        await converge(w)
        remote_id = await _remove_p1(w)
        w.source.set(_org(["p0", "p1"]))
        mark = len(w.proxy.log)
        await converge(w)
        assert f"PATCH /Users/{remote_id}" in w.writes(mark)
        assert w.raw("GET", f"/Users/{remote_id}")["active"] is True
        # The pending deletion was called off: after the grace nothing is deleted.
        now[0] += GRACE + 1
        mark = len(w.proxy.log)
        await converge(w)
        assert w.writes(mark) == []
        assert w.raw("GET", f"/Users/{remote_id}")["active"] is True
