"""The hold and the operator's decisions survive a proportional cycle about something else.

The file source reports which records changed, so a cycle after "bob left the
group" plans only bob's key and the bound group. Before the engine planned
targets with a hold or decisions in full, that cycle replaced the hold with
bob's key alone: carol's and dave's held deactivations left the hold without
being sent or decided (they stayed active, not dirty, shown nowhere), and a
rejection lapsed because the rejected row was not in the partial plan.
"""

from __future__ import annotations

from daemon import holds
from daemon.store import REJECTED
from tests.admin.conftest import Console, console_doc

CAROL = ("user", "u-carol")
DAVE = ("user", "u-dave")
BOB = ("user", "u-bob")


async def test_a_change_elsewhere_keeps_every_held_removal(console: Console) -> None:
    w, store = console.world, console.world.store
    before = len(w.target.delivered)
    w.write_directory(console_doc(("alice", "eve", "erin")))  # bob leaves the group too
    await w.cycle()
    hold = await store.hold("wiki")
    assert hold is not None and {CAROL, DAVE, BOB} <= hold.keys, hold
    assert {o.key for o in await holds.held(store, "wiki")} >= {CAROL, DAVE, BOB}
    sent = {(d.kind, d.object_id) for d in w.target.delivered[before:]}
    assert not sent & {CAROL, DAVE, BOB}


async def test_a_change_elsewhere_keeps_a_rejection(console: Console) -> None:
    w, store = console.world, console.world.store
    assert await holds.reject(store, "wiki", [DAVE], "ops", w.clock()) == [DAVE]
    await w.cycle()  # the rejection is used: dave stays as the target has him
    assert (await store.decisions("wiki"))[DAVE].applied
    before = len(w.target.delivered)
    w.write_directory(console_doc(("alice", "eve", "erin")))
    await w.cycle()
    await w.cycle()
    kept = await store.decisions("wiki")
    assert DAVE in kept and kept[DAVE].decision == REJECTED
    dave = await store.target_object("wiki", DAVE)
    assert dave is not None and dave.active
    assert DAVE not in {(d.kind, d.object_id) for d in w.target.delivered[before:]}
