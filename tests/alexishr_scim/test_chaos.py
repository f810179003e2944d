"""500 users and 20 groups through a proxy that fails about one request in five."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from daemon.model import Snapshot, make_group
from tests.scim.faults import Fault

from .world import converge, person, world

pytestmark = pytest.mark.slow

FAULTS = {
    Fault.RATE_LIMIT_SECONDS: 0.03,
    Fault.RATE_LIMIT_DATE: 0.01,
    Fault.UNAVAILABLE: 0.02,
    Fault.SERVER_ERROR: 0.08,
    Fault.RESET: 0.05,
    Fault.SLOW: 0.01,
}


async def test_chaos_converges_exactly_without_duplicates_and_honours_retry_after(
    tmp_path: Path,
) -> None:
    users = [person(f"c{i:03d}", title=f"T{i % 7}") for i in range(500)]
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
    ) as w:
        await converge(w, within=150)
        faults = Counter(r.fault for r in w.proxy.log if r.fault is not None)
        share = sum(faults.values()) / len(w.proxy.log)
        assert 0.12 < share < 0.3, (share, faults)

        remote = w.dump("Users")
        by_external = Counter(u.get("externalId") for u in remote)
        assert len(remote) == 500
        assert max(by_external.values()) == 1  # zero duplicates
        assert {u["externalId"]: u["title"] for u in remote} == {u.id: u.title for u in users}
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
