"""An approval made while a cycle is running, on both store backends.

A cycle reads the target's hold while it plans and writes the hold back
when it commits. An operator's approval recorded between the two must not
be lost (the cycle's write must not undo it), and must release only what
the operator saw: a hold whose keys the cycle changed is not approved by an
approval of the old keys.

The approval is made from inside the cycle, at the engine's own seam just
after it read the hold (``_member_losses``), on a real store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from daemon import holds
from daemon.portal.admin import StaleHold, WholeHold
from daemon.store import Key
from tests.store.backends import StoreFactory
from tests.store.conftest import store_factory

from .test_proportional_holds import GROUP, World, directory, keys

__all__ = ["store_factory"]

#: The keys of the world's hold: the suspension of u40..u69 and the group losing them.
SEEN = keys(range(40, 70), GROUP)


@pytest.fixture
async def world(store_factory: StoreFactory) -> AsyncIterator[World]:
    """70 users provisioned; then a full cycle holds the suspension of u40..u69."""
    w = World(await store_factory.open())
    await w.full(directory())
    await w.full(directory(suspended=range(40, 70)))
    assert (await w.hold())[0] == SEEN
    w.target.calls.clear()
    yield w


def during_next_plan(world: World, decide: Callable[[], Awaitable[object]]) -> list[object]:
    """Run ``decide`` once, in the next cycle, after it has read the hold and before it commits."""
    engine = world.engine
    original = engine._member_losses
    done: list[object] = []

    async def seam(*args: object) -> object:
        if not done:
            done.append(await decide())
        return await original(*args)  # type: ignore[arg-type]

    engine._member_losses = seam  # type: ignore[method-assign]
    return done


def users(ids: range) -> set[str]:
    return {f"u{i}" for i in ids}


def approvals(world: World) -> dict[str, Callable[[], Awaitable[object]]]:
    """The whole-hold approvals there are: the console's Approve all without the daemon
    (:class:`WholeHold`, for the keys the page showed), and ``provisiond approve app``
    with no keys (per-key decisions on every key held when it runs)."""
    store = world.store
    return {
        "console-whole": lambda: WholeHold(store).approve("app", SEEN, "admin:ada"),
        "cli-all": lambda: holds.approve(store, "app", None, "ops", time.time()),
    }


@pytest.mark.parametrize("how", ["console-whole", "cli-all"])
async def test_an_approval_made_during_a_cycle_is_kept(world: World, how: str) -> None:
    decide = approvals(world)[how]
    done = during_next_plan(world, decide)
    # A cycle with an unrelated change: it re-plans the target and writes the same hold.
    await world.changed(directory(suspended=range(40, 70), title={"u3": "Dev"}))
    assert done, "the approval was not made during the cycle"
    assert world.sent() == {"u3"}  # the cycle in flight planned before the approval
    hold = await world.store.hold("app")
    assert hold is not None and hold.keys == SEEN
    # The approval still stands after the cycle's commit ...
    assert await world.store.approved_holds() == ["app"]
    listed = await holds.held(world.store, "app")
    if how == "cli-all":
        assert {o.decision for o in listed} == {"approved"}
    else:
        assert hold.approved
    # ... and the next cycle sends it: every suspension goes out, nothing stays held.
    world.target.calls.clear()
    await world.engine.cycle()
    assert users(range(40, 70)) <= world.sent()
    assert await world.store.hold("app") is None
    assert await world.store.approved_holds() == []


@pytest.mark.parametrize("how", ["console-whole", "cli-all"])
async def test_an_approval_of_keys_the_cycle_then_changed_releases_only_those(
    world: World, how: str
) -> None:
    decide = approvals(world)[how]
    done = during_next_plan(world, decide)
    # The cycle in flight also holds the suspension of u30..u39, which nobody saw.
    await world.changed(directory(suspended=range(30, 70)))
    assert done, "the approval was not made during the cycle"
    hold = await world.store.hold("app")
    assert hold is not None and hold.keys == keys(range(30, 70), GROUP)
    # Nothing is approved for keys the operator did not see.
    assert not hold.approved
    world.target.calls.clear()
    await world.engine.cycle()
    sent = world.sent()
    assert not users(range(30, 40)) & sent, "a suspension nobody approved went out"
    hold = await world.store.hold("app")
    assert hold is not None and users(range(30, 40)) <= {i for _, i in hold.keys}
    if how == "cli-all":
        # The keys approved one by one go out; the new ones stay held.
        assert users(range(40, 70)) <= sent
        assert {k for k in hold.keys if k[0] == "user"} == keys(range(30, 40))
    else:
        # The whole hold approved is another hold now: nothing goes out, all stays held.
        assert not users(range(40, 70)) & sent
        assert hold.keys == keys(range(30, 70), GROUP)


async def test_a_whole_hold_approval_of_a_hold_that_changed_is_refused(world: World) -> None:
    """The console's Approve all for the keys it showed, after a cycle changed the hold."""
    await world.changed(directory(suspended=range(30, 70)))
    with pytest.raises(StaleHold):
        await WholeHold(world.store).approve("app", SEEN, "admin:ada")
    assert await world.store.approved_holds() == []
    # The store's own approval for given keys is as strict, in its transaction.
    assert await world.store.approve("app", SEEN) == 0
    hold = await world.store.hold("app")
    assert hold is not None and not hold.approved
    seen: frozenset[Key] = hold.keys
    assert await world.store.approve("app", seen) == len(seen)
    assert await world.store.approved_holds() == ["app"]
