"""The mass-removal guard in front of a real AlexisHR target and scim2-server.

A directory whose users vanish *and* whose groups come back empty must not
empty the application's groups before an operator approves: neither member
removals nor deletions reach the server until ``provisiond approve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from daemon.config import GuardSettings
from daemon.model import Snapshot, make_group

from .world import BOUND, World, converge, person, world

USERS = 40


def _removals(w: World, since: int) -> list[str]:
    """Writes since ``since`` that take something away: member removals, deactivations, deletes."""
    out: list[str] = []
    for r in w.proxy.log[since:]:
        if r.method == "DELETE":
            out.append(f"DELETE {r.path}")
        elif r.method == "PATCH":
            ops: list[dict[str, Any]] = msgspec.json.decode(r.body)["Operations"]
            for op in ops:
                if op["op"] == "remove" or (op.get("path") == "active" and op["value"] is False):
                    out.append(f"PATCH {r.path} {op['op']} {op.get('path')}")
        elif r.method == "PUT":
            out.append(f"PUT {r.path}")
    return out


def _members(w: World, name: str) -> set[str]:
    group = next(g for g in w.dump("Groups") if g["displayName"] == name)
    return {m["value"] for m in group.get("members", [])}


async def test_emptied_groups_and_vanished_users_wait_for_approval(tmp_path: Path) -> None:
    users = [person(f"p{i:02d}") for i in range(USERS)]
    ids = [u.id for u in users]
    full = Snapshot.of(
        users, [make_group("g-app", BOUND, ids), make_group("g-team", "Team", ids[:30])]
    )
    async with world(
        tmp_path,
        full,
        bound=[BOUND, "Team"],
        guard=GuardSettings(max_share=0.1, min_count=25),
        hard_delete_after=0,
    ) as w:
        await converge(w)
        assert len(w.users_by_external()) == USERS
        assert len(_members(w, BOUND)) == USERS
        assert len(_members(w, "Team")) == 30

        # The directory comes back with no users, the bound group empty and
        # the other bound group gone.
        w.source.set(Snapshot.of([], [make_group("g-app", BOUND, [])]))
        start = len(w.proxy.log)
        report = await w.engine.cycle()
        assert _removals(w, start) == []
        assert report.targets["alexishr"].held == USERS + 2
        assert len(_members(w, BOUND)) == USERS
        assert len(_members(w, "Team")) == 30
        assert all(u["active"] for u in w.users_by_external().values())
        # Further cycles keep holding.
        await w.engine.cycle()
        assert _removals(w, start) == []

        assert await w.engine.store.approve("alexishr") == USERS + 2
        start = len(w.proxy.log)
        await converge(w)
        removals = _removals(w, start)
        assert any(r.startswith("PATCH /Groups/") and " remove " in r for r in removals)
        assert any(r.startswith("DELETE /Groups/") for r in removals)
        assert sum(1 for r in removals if r.startswith("DELETE /Users/")) == USERS
        assert [g["displayName"] for g in w.dump("Groups")] == [BOUND]
        assert _members(w, BOUND) == set()
        assert w.users_by_external() == {}
