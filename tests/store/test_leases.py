"""Leases and fenced writes: leader election among replicas sharing one store, on every backend."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from daemon.model import content_hash
from daemon.store import (
    STORE_METHODS,
    Fence,
    FencedOut,
    Lease,
    Link,
    LinkChanges,
    StateError,
    Store,
)
from daemon.store.fenced import FencedStore
from tests.store.backends import StoreFactory
from tests.store.data import ok, plan, upsert, user, want
from tests.store.state import read_state

#: Short enough to let a lease expire in a test, long enough to outlive a slow statement.
SHORT = 0.4


async def expire(lease: Lease) -> None:
    """Wait until ``lease`` has expired by the store's clock."""
    await anyio.sleep(max(0.0, lease.expires_in) + 0.05)


class TestAcquire:
    async def test_a_free_lease_is_taken_at_term_one(self, store: Store) -> None:
        before = time.time()
        lease = await store.acquire_lease("source", "a/1", 8.0)
        assert lease is not None
        assert (lease.name, lease.holder, lease.term) == ("source", "a/1", 1)
        assert before - 1 <= lease.acquired_at == lease.renewed_at <= time.time() + 1
        assert lease.expires_at == pytest.approx(lease.acquired_at + 8.0)
        assert lease.live and 7.0 < lease.expires_in <= 8.0
        assert lease.fence == Fence("source", "a/1", 1)
        assert await store.leases() == [
            Lease(
                "source",
                "a/1",
                1,
                lease.acquired_at,
                lease.renewed_at,
                lease.expires_at,
                pytest.approx(8.0, abs=1.0),  # type: ignore[arg-type]
            )
        ]

    async def test_the_holder_renews_keeping_its_term(self, store: Store) -> None:
        first = await store.acquire_lease("target:app", "a/1", 8.0)
        assert first is not None
        await anyio.sleep(0.05)
        again = await store.acquire_lease("target:app", "a/1", 8.0)
        assert again is not None
        assert again.term == first.term == 1
        assert again.acquired_at == first.acquired_at
        assert again.renewed_at > first.renewed_at
        assert again.expires_at > first.expires_at

    async def test_a_live_lease_of_another_holder_is_refused_and_unchanged(
        self, store: Store
    ) -> None:
        await store.acquire_lease("source", "a/1", 8.0)
        before = await store.leases()
        assert await store.acquire_lease("source", "b/1", 8.0) is None
        after = await store.leases()
        assert [(x.holder, x.term, x.expires_at) for x in after] == [
            (x.holder, x.term, x.expires_at) for x in before
        ]

    async def test_an_expired_lease_goes_to_the_next_holder_with_the_next_term(
        self, store: Store
    ) -> None:
        first = await store.acquire_lease("source", "a/1", SHORT)
        assert first is not None
        await expire(first)
        (row,) = await store.leases()
        assert not row.live and row.holder == "a/1"
        taken = await store.acquire_lease("source", "b/1", 8.0)
        assert taken is not None
        assert (taken.holder, taken.term) == ("b/1", 2)
        assert taken.acquired_at > first.acquired_at
        # The old holder now finds it taken.
        assert await store.acquire_lease("source", "a/1", 8.0) is None

    async def test_the_term_grows_even_when_the_same_holder_takes_it_after_expiry(
        self, store: Store
    ) -> None:
        # An expired lease may have been lost and won back meanwhile: a new term,
        # so no write fenced by the old one is accepted again.
        first = await store.acquire_lease("source", "a/1", SHORT)
        assert first is not None
        await expire(first)
        again = await store.acquire_lease("source", "a/1", 8.0)
        assert again is not None and again.term == 2

    async def test_leases_are_independent_and_listed_by_name(self, store: Store) -> None:
        for name, holder in (("target:b", "x/1"), ("source", "y/1"), ("target:a", "x/1")):
            assert await store.acquire_lease(name, holder, 8.0) is not None
        assert [(x.name, x.holder, x.term) for x in await store.leases()] == [
            ("source", "y/1", 1),
            ("target:a", "x/1", 1),
            ("target:b", "x/1", 1),
        ]

    async def test_leases_survive_a_reopen(self, store_factory: StoreFactory) -> None:
        store = await store_factory.open()
        await store.acquire_lease("source", "a/1", 30.0)
        before = await store.leases()
        await store.aclose()
        again = await store_factory.open()
        after = await again.leases()
        assert [(x.name, x.holder, x.term, x.expires_at) for x in after] == [
            (x.name, x.holder, x.term, x.expires_at) for x in before
        ]


class TestRelease:
    async def test_a_released_lease_is_free_at_once_and_the_term_grows(
        self, store: Store
    ) -> None:
        lease = await store.acquire_lease("source", "a/1", 30.0)
        assert lease is not None
        await store.release_lease("source", "a/1", lease.term)
        (row,) = await store.leases()
        assert not row.live
        taken = await store.acquire_lease("source", "b/1", 30.0)
        assert taken is not None and (taken.holder, taken.term) == ("b/1", 2)

    async def test_only_the_holder_at_its_term_can_release(self, store: Store) -> None:
        lease = await store.acquire_lease("source", "a/1", 30.0)
        assert lease is not None
        await store.release_lease("source", "b/1", lease.term)
        await store.release_lease("source", "a/1", lease.term + 1)
        await store.release_lease("nothing", "a/1", 1)
        (row,) = await store.leases()
        assert row.live and row.holder == "a/1"
        assert await store.acquire_lease("source", "b/1", 30.0) is None


class TestRace:
    async def test_two_stores_racing_for_a_free_lease_exactly_one_wins(
        self, store_factory: StoreFactory
    ) -> None:
        one, two = await store_factory.open(), await store_factory.open()
        won: dict[str, Lease | None] = {}

        async def take(store: Store, holder: str, name: str) -> None:
            won[holder] = await store.acquire_lease(name, holder, 30.0)

        for i in range(30):
            won.clear()
            async with anyio.create_task_group() as tg:
                tg.start_soon(take, one, "a/1", f"target:t{i}")
                tg.start_soon(take, two, "b/1", f"target:t{i}")
            winners = [h for h, lease in won.items() if lease is not None]
            assert len(winners) == 1, won
            (row,) = [x for x in await one.leases() if x.name == f"target:t{i}"]
            assert (row.holder, row.term) == (winners[0], 1)

    async def test_two_stores_racing_for_an_expired_lease_exactly_one_wins(
        self, store_factory: StoreFactory
    ) -> None:
        one, two = await store_factory.open(), await store_factory.open()
        won: list[Lease] = []

        async def take(store: Store, holder: str, name: str) -> None:
            lease = await store.acquire_lease(name, holder, 30.0)
            if lease is not None:
                won.append(lease)

        for i in range(10):
            first = await one.acquire_lease(f"l{i}", "old/1", 0.1)
            assert first is not None
            await expire(first)
            won.clear()
            async with anyio.create_task_group() as tg:
                tg.start_soon(take, one, "a/1", f"l{i}")
                tg.start_soon(take, two, "b/1", f"l{i}")
            assert [x.term for x in won] == [2]


Write = Callable[[Store, Fence | None, str], Awaitable[None]]


async def _commit(store: Store, fence: Fence | None, tag: str) -> None:
    alice = user("alice", title=tag)
    await store.commit(f"v-{tag}", [upsert(alice)], [], {"app": plan(want(alice))}, fence=fence)


async def _record(store: Store, fence: Fence | None, tag: str) -> None:
    result = ok(("user", "alice"), content_hash(user("alice", title="Before")), f"r-{tag}")
    await store.record("app", [result], 5.0, fence=fence)


async def _set_meta(store: Store, fence: Fence | None, tag: str) -> None:
    await store.set_meta("marker", tag, fence=fence)


async def _save_links(store: Store, fence: Fence | None, tag: str) -> None:
    changes = LinkChanges(links={("user", "alice"): Link(f"r-{tag}", {"title": tag})})
    await store.save_links("app", changes, fence=fence)


async def _set_target_meta(store: Store, fence: Fence | None, tag: str) -> None:
    await store.set_target_meta("app", "marker", tag, fence=fence)


WRITES: dict[str, Write] = {
    "commit": _commit,
    "record": _record,
    "set_meta": _set_meta,
    "save_links": _save_links,
    "set_target_meta": _set_target_meta,
}


async def _seed(store: Store) -> None:
    """Something for every write to change: a committed user, delivered once."""
    alice = user("alice", title="Before")
    await store.commit("v1", [upsert(alice)], [], {"app": plan(want(alice))})
    await store.record("app", [ok(("user", "alice"), content_hash(alice), "r-1")], 1.0)
    await store.set_meta("marker", "before")
    await store.set_target_meta("app", "marker", "before")


async def _state(store: Store) -> object:
    state = await read_state(store, ("app",), ("marker",))
    return state, await store.target_meta("app", "marker")


@pytest.mark.parametrize("write", sorted(WRITES))
class TestFencedWrites:
    async def test_a_write_under_the_current_fence_lands(self, store: Store, write: str) -> None:
        await _seed(store)
        lease = await store.acquire_lease("target:app", "a/1", 30.0)
        assert lease is not None
        before = await _state(store)
        await WRITES[write](store, lease.fence, "new")
        assert await _state(store) != before

    async def test_a_write_after_a_takeover_fails_and_leaves_nothing(
        self, store_factory: StoreFactory, write: str
    ) -> None:
        old, new = await store_factory.open(), await store_factory.open()
        await _seed(old)
        lease = await old.acquire_lease("target:app", "a/1", SHORT)
        assert lease is not None
        await expire(lease)
        taken = await new.acquire_lease("target:app", "b/1", 30.0)
        assert taken is not None and taken.term == 2
        before = await _state(new)
        with pytest.raises(FencedOut) as caught:
            await WRITES[write](old, lease.fence, "old")
        assert isinstance(caught.value, StateError)
        message = str(caught.value)
        assert "target:app" in message and "b/1" in message and "term 2" in message
        assert await _state(new) == before
        # The new leader's own writes go through.
        await WRITES[write](new, taken.fence, "new")
        assert await _state(new) != before

    async def test_a_write_after_the_lease_expired_fails_even_untaken(
        self, store: Store, write: str
    ) -> None:
        await _seed(store)
        lease = await store.acquire_lease("target:app", "a/1", SHORT)
        assert lease is not None
        await expire(lease)
        before = await _state(store)
        with pytest.raises(FencedOut, match="expired"):
            await WRITES[write](store, lease.fence, "late")
        assert await _state(store) == before

    async def test_a_write_after_a_release_fails(self, store: Store, write: str) -> None:
        await _seed(store)
        lease = await store.acquire_lease("target:app", "a/1", 30.0)
        assert lease is not None
        await store.release_lease("target:app", "a/1", lease.term)
        before = await _state(store)
        with pytest.raises(FencedOut):
            await WRITES[write](store, lease.fence, "late")
        assert await _state(store) == before

    async def test_a_fence_on_a_lease_nobody_holds_fails(self, store: Store, write: str) -> None:
        await _seed(store)
        before = await _state(store)
        with pytest.raises(FencedOut, match="nobody"):
            await WRITES[write](store, Fence("target:app", "a/1", 1), "late")
        assert await _state(store) == before

    async def test_a_fenced_store_puts_its_fence_on_the_write(
        self, store_factory: StoreFactory, write: str
    ) -> None:
        old, new = await store_factory.open(), await store_factory.open()
        await _seed(old)
        lease = await old.acquire_lease("target:app", "a/1", SHORT)
        assert lease is not None
        fenced = FencedStore(old, lease.fence)
        before = await _state(new)
        await WRITES[write](fenced, None, "first")  # still the leader: it lands
        assert await _state(new) != before
        await expire(lease)
        assert await new.acquire_lease("target:app", "b/1", 30.0) is not None
        landed = await _state(new)
        with pytest.raises(FencedOut):
            await WRITES[write](fenced, None, "second")
        assert await _state(new) == landed


def test_a_fenced_store_has_every_store_method() -> None:
    # What a target is started with under leader election is a whole Store.
    assert [name for name in STORE_METHODS if not hasattr(FencedStore, name)] == []
