"""Everything a store holds, read through the protocol into one comparable value.

The transaction and crash tests compare these before and after: a protocol
method that adds state should add its reading here.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.model import DirectoryObject
from daemon.store import (
    Committed,
    DueRow,
    Hold,
    Key,
    ObjectStatus,
    Store,
    TargetIndex,
    TargetLinks,
)

#: Meta keys the store itself writes.
STORE_META = ("snapshot_version", "snapshot_committed_at")


@dataclass(frozen=True)
class TargetState:
    index: TargetIndex
    rows: dict[Key, DueRow]
    dirty: dict[Key, DueRow]
    counts: tuple[int, int]
    problems: list[ObjectStatus]
    hold: Hold | None
    links: TargetLinks


@dataclass(frozen=True)
class State:
    committed: Committed
    records: dict[Key, DirectoryObject]
    meta: dict[str, str | None]
    approved_holds: list[str]
    targets: dict[str, TargetState]
    #: (name, holder, term, acquired_at, renewed_at, expires_at) of every lease row.
    leases: list[tuple[str, str, int, float, float, float]]


async def read_state(store: Store, targets: tuple[str, ...], meta: tuple[str, ...] = ()) -> State:
    committed = await store.committed()
    per_target: dict[str, TargetState] = {}
    for target in targets:
        index = await store.target_index(target)
        per_target[target] = TargetState(
            index=index,
            rows=await store.rows(target, list(index.hashes)),
            dirty=await store.rows(target, None),
            counts=await store.counts(target),
            problems=await store.problems(target, 10_000),
            hold=await store.hold(target),
            links=await store.target_links(target),
        )
    return State(
        committed=committed,
        records=await store.records(list(committed.hashes)),
        meta={k: await store.get_meta(k) for k in (*STORE_META, *meta)},
        approved_holds=sorted(await store.approved_holds()),
        targets=per_target,
        leases=[
            (x.name, x.holder, x.term, x.acquired_at, x.renewed_at, x.expires_at)
            for x in await store.leases()
        ],
    )
