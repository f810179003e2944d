"""Operators' decisions on held keys, as a plan applies them (pure functions).

The mass-removal guard holds destructive rows (``daemon.engine.guard``). An
operator then decides per key (``provisiond approve`` / ``reject``, kept in
the store as :class:`~daemon.store.Decision`): an approval lets the held
change go out with the next plan, and is then spent; a rejection keeps the
target as it is (the row is left out of the plan, so its recorded desired
state does not move) for as long as the directory record keeps the hash it
had when the decision was made. Once the record changes, or the change is
no longer planned, the rejection lapses and the row is planned as usual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from daemon.assignment import ScopedPlan
from daemon.store import APPROVED, Decision, Key, Settled


@dataclass(frozen=True, slots=True)
class Decided:
    """A plan with the operator's decisions applied.

    ``scoped`` is the plan without the rows a rejection keeps back;
    ``approved`` the keys approved one by one; ``rejected`` the keys kept
    back; ``settled`` what to do with each decision in the commit.
    """

    scoped: ScopedPlan
    approved: frozenset[Key]
    rejected: frozenset[Key]
    settled: tuple[Settled, ...]


def apply_decisions(
    scoped: ScopedPlan, decisions: dict[Key, Decision], hashes: Mapping[Key, str]
) -> Decided:
    """Apply ``decisions`` to one target's plan; ``hashes`` are the snapshot's."""
    if not decisions:
        return Decided(scoped, frozenset(), frozenset(), ())
    planned = {row.key for row in scoped.desired}
    approved: set[Key] = set()
    rejected: set[Key] = set()
    settled: list[Settled] = []
    for key, decision in sorted(decisions.items()):
        if decision.decision == APPROVED:
            approved.add(key)
            keep = False  # spent by this plan
        else:
            keep = key in planned and hashes.get(key) == decision.directory_hash
            if keep:
                rejected.add(key)
        settled.append(Settled(key, decision.decided_at, keep))
    if rejected:
        scoped = dataclasses.replace(
            scoped,
            desired=[r for r in scoped.desired if r.key not in rejected],
            deactivations=[k for k in scoped.deactivations if k not in rejected],
        )
    return Decided(scoped, frozenset(approved), frozenset(rejected), tuple(settled))
