"""Second factors in the store, on every backend: kept per user, replaced by id, swapped
only from the data the caller read (the replay guard), and deleted once (a recovery code)."""

from __future__ import annotations

import anyio

from daemon.store import FactorRecord, Store
from tests.store.backends import StoreFactory


def factor(
    user: str, fid: str, kind: str = "passkey", *, data: str = "{}", at: float = 100.0
) -> FactorRecord:
    return FactorRecord(user, fid, kind, f"{kind} {fid}", data, at)


async def test_factors_are_per_user_oldest_first(store: Store) -> None:
    await store.put_factor(factor("u1", "b", at=200.0))
    await store.put_factor(factor("u1", "a", at=200.0))
    await store.put_factor(factor("u1", "totp", "totp", at=50.0))
    await store.put_factor(factor("u2", "c"))
    assert [f.id for f in await store.factors("u1")] == ["totp", "a", "b"]
    assert [f.id for f in await store.factors("u2")] == ["c"]
    assert await store.factors("nobody") == []
    assert await store.factor_users() == [("u1", 3), ("u2", 1)]


async def test_put_replaces_the_factor_with_the_same_id(store: Store) -> None:
    await store.put_factor(factor("u1", "totp", "totp", data='{"v": 1}'))
    await store.put_factor(
        FactorRecord("u1", "totp", "totp", "phone", '{"v": 2}', 300.0, used_at=310.0)
    )
    [only] = await store.factors("u1")
    assert only == FactorRecord("u1", "totp", "totp", "phone", '{"v": 2}', 300.0, 310.0)


async def test_a_swap_needs_the_data_it_expects(store: Store) -> None:
    await store.put_factor(factor("u1", "totp", "totp", data='{"step": 1}'))
    assert await store.swap_factor("u1", "totp", '{"step": 1}', '{"step": 2}', 150.0) is True
    # The same code again: the data moved on, so the second swap does nothing.
    assert await store.swap_factor("u1", "totp", '{"step": 1}', '{"step": 2}', 160.0) is False
    assert await store.swap_factor("u2", "totp", '{"step": 2}', '{"step": 3}', 160.0) is False
    [only] = await store.factors("u1")
    assert (only.data, only.used_at) == ('{"step": 2}', 150.0)


async def test_racing_swaps_from_the_same_data_have_one_winner(
    store_factory: StoreFactory,
) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await one.put_factor(factor("u1", "key", data='{"counter": 5}'))
    won: list[bool] = []

    async def swap(store: Store, n: int) -> None:
        won.append(await store.swap_factor("u1", "key", '{"counter": 5}', f'{{"c": {n}}}', 1.0))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(swap, one if n % 2 else two, n)
    assert sorted(won) == [False] * 7 + [True]


async def test_a_factor_is_deleted_once(store_factory: StoreFactory) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await one.put_factor(factor("u1", "recovery:abc", "recovery"))
    results: list[bool] = []

    async def use(store: Store) -> None:
        results.append(await store.delete_factor("u1", "recovery:abc"))

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(use, one if n % 2 else two)
    assert sorted(results) == [False] * 5 + [True]
    assert await one.factors("u1") == []


async def test_delete_factors_of_a_user_or_of_one_kind(store: Store) -> None:
    for fid, kind in (("totp", "totp"), ("k1", "passkey"), ("r1", "recovery"), ("r2", "recovery")):
        await store.put_factor(factor("u1", fid, kind))
    await store.put_factor(factor("u2", "totp", "totp"))
    assert await store.delete_factors("u1", "recovery") == 2
    # Same created_at: ordered by id.
    assert [f.id for f in await store.factors("u1")] == ["k1", "totp"]
    assert await store.delete_factors("u1") == 2
    assert await store.factors("u1") == []
    assert [f.id for f in await store.factors("u2")] == ["totp"]
    assert await store.delete_factors("u1") == 0


async def test_factors_survive_a_reopen(store_factory: StoreFactory) -> None:
    store = await store_factory.open()
    await store.put_factor(factor("u1", "totp", "totp", data='{"secret": "sealed"}'))
    await store.aclose()
    again = await store_factory.open()
    assert [(f.id, f.data) for f in await again.factors("u1")] == [
        ("totp", '{"secret": "sealed"}')
    ]
