"""A create whose reply is lost must never make a second object (issue 10, defect 1).

The fault proxy forwards the POST to scim2-server, which creates the object,
then drops the connection before the reply. scim2-server, like RFC 7643,
does not require unique group names, so a blind retry of the POST makes a
duplicate group; the target must look the object up before sending again.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from daemon.model import Snapshot, make_group
from tests.scim.faults import Fault

from .world import PEERS, Peer, converge, person, world

GROUPS = 20


def _org() -> Snapshot:
    users = [person(f"l{i:03d}") for i in range(2 * GROUPS)]
    groups = [
        make_group(f"lg{g:02d}", f"Lost {g:02d}", [users[2 * g].id, users[2 * g + 1].id])
        for g in range(GROUPS)
    ]
    return Snapshot.of(users, groups)


async def _lost_replies_converge_exactly(tmp_path: Path, peer: Peer, **scim: object) -> None:
    snapshot = _org()
    names = [g.name for g in snapshot.groups.values()]
    async with world(tmp_path, snapshot, bound=names, peer=peer, **scim) as w:
        w.proxy.script(*[Fault.LOST_REPLY] * GROUPS, method="POST", path="/Groups")
        w.proxy.script(*[Fault.LOST_REPLY] * 10, method="POST", path="/Users")
        await converge(w)
        lost = [r for r in w.proxy.log if r.fault is Fault.LOST_REPLY]
        assert len([r for r in lost if "/Groups" in r.path]) == GROUPS
        assert len([r for r in lost if "/Users" in r.path]) == 10

        groups = w.dump("Groups")
        assert Counter(g["displayName"] for g in groups) == Counter(names)  # no duplicates
        users = w.dump("Users")
        assert len(users) == 2 * GROUPS
        id_of = {u["externalId"]: u["id"] for u in users}
        for group in groups:
            wanted = {id_of[m] for m in snapshot.groups[group["externalId"]].members}
            assert {m["value"] for m in group.get("members", [])} == wanted
        # Each lost create was followed by a lookup, never by a blind second POST.
        assert len(w.proxy.requests("POST", "/Groups")) == GROUPS
        assert len(w.proxy.requests("POST", "/Users")) == 2 * GROUPS

        before = len(w.proxy.log)
        await converge(w)
        assert w.writes(before) == []


@pytest.mark.parametrize("peer", PEERS)
async def test_lost_replies_to_creates_make_no_duplicates(tmp_path: Path, peer: Peer) -> None:
    await _lost_replies_converge_exactly(tmp_path, peer)


async def test_lost_replies_without_filter_support_make_no_duplicates(tmp_path: Path) -> None:
    spc_filter_off = {"proxy_kw": {"hide_filter": True}}
    await _lost_replies_converge_exactly(tmp_path, "scim2-server", **spc_filter_off)
