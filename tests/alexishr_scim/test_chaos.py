"""500 users and 20 groups through a proxy that fails about one request in five.

Run against the AlexisHR preset and a ``kind: scim`` application configured in
YAML (``kind``), with the same faults at the same rates. The generic run uses
200 users instead of 500 to keep the suite's time down (the two kinds share the
engine; the mapping and the wording are what differ).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from daemon.model import Snapshot, make_group
from tests.scim.faults import Fault

from .world import KINDS, Kind, converge, expected_mapping, mapped, person, world

pytestmark = pytest.mark.slow

FAULTS = {
    Fault.RATE_LIMIT_SECONDS: 0.03,
    Fault.RATE_LIMIT_DATE: 0.01,
    Fault.UNAVAILABLE: 0.02,
    Fault.SERVER_ERROR: 0.08,
    Fault.RESET: 0.05,
    Fault.SLOW: 0.01,
}
#: Users per kind (see the module docstring).
USERS: dict[Kind, int] = {"alexishr": 500, "scim": 200}


@pytest.mark.parametrize("kind", KINDS)
async def test_chaos_converges_exactly_without_duplicates_and_honours_retry_after(
    tmp_path: Path, kind: Kind
) -> None:
    n = USERS[kind]
    users = [person(f"c{i:03d}", title=f"T{i % 7}") for i in range(n)]
    names = [f"Team {g:02d}" for g in range(20)]
    groups = [
        make_group(f"g{g:02d}", names[g], [u.id for i, u in enumerate(users) if i % 20 == g])
        for g in range(20)
    ]
    snapshot = Snapshot.of(users, groups)
    async with world(
        tmp_path,
        snapshot,
        bound=names,
        proxy_kw={"rates": FAULTS, "seed": 7, "retry_after": 1},
        engine_kw={"batch_size": 200},
        kind=kind,
    ) as w:
        await converge(w, within=150)
        faults = Counter(r.fault for r in w.proxy.log if r.fault is not None)
        share = sum(faults.values()) / len(w.proxy.log)
        assert 0.12 < share < 0.3, (share, faults)

        remote = w.dump("Users")
        by_external = Counter(u.get("externalId") for u in remote)
        assert len(remote) == n
        assert max(by_external.values()) == 1  # zero duplicates
        assert {u["externalId"]: u["title"] for u in remote} == {u.id: u.title for u in users}
        # kind: scim: the template, the constant and the extension attribute arrived.
        assert {u["externalId"]: mapped(kind, u) for u in remote} == {
            u.id: expected_mapping(kind, u) for u in users
        }
        id_of = {u["externalId"]: u["id"] for u in remote}
        remote_groups = w.dump("Groups")
        assert sorted(g["displayName"] for g in remote_groups) == names
        for group in remote_groups:
            wanted = {id_of[m] for m in snapshot.groups[group["externalId"]].members}
            assert {m["value"] for m in group.get("members", [])} == wanted

        # Retry-After honoured: after each 429/503 nothing is sent until the delay has
        # passed, except requests already in flight when the answer came back.
        log = w.proxy.log
        pushbacks = [r for r in log if r.status in (429, 503)]
        assert pushbacks
        for pushed in pushbacks:
            early = [r for r in log if pushed.at + 0.2 < r.at < pushed.at + 0.95]
            assert not early, (pushed.fault, [(r.method, r.at - pushed.at) for r in early])
