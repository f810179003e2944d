"""Schema versions: a new store is current, an older one upgrades, a newer one is refused.

The upgrade test runs from every older version the backend has, so a new
migration is covered without touching this file; if it changes what an
older version held, :meth:`StoreFactory.seed` learns to write that.
"""

from __future__ import annotations

import pytest

from daemon.model import AccountState
from daemon.store import Committed, Hold, ObjectStatus, StateError, Store, TargetIndex
from tests.store.backends import StoreFactory
from tests.store.data import Seed, SeedHold, SeedRow, group, key, plan, upsert, user, want

ALICE = user("1", username="Alice", email="Alice.Smith@Example.org", title="CTO")
BOB = user("2", username="bob", email="bob@example.org", state=AccountState.SUSPENDED)
BOB_BEFORE = user("2", username="bob", email="bob@example.org")
CAROL = user("3", username="carol", email="carol@example.org")
STAFF = group("staff", "1", "2")

SEED = Seed(
    version="snap-7",
    committed_at=1_700_000_000.5,
    objects=[ALICE, BOB, STAFF],
    rows=[
        # Delivered and clean.
        SeedRow("app", key(ALICE), ALICE, True, ALICE, "r-1", dirty=False),
        # A change that keeps failing.
        SeedRow(
            "app",
            key(BOB),
            BOB,
            False,
            BOB_BEFORE,
            "r-2",
            dirty=True,
            attempts=2,
            last_error="HTTP 503",
            next_attempt_at=1_700_000_100.0,
        ),
        # Never delivered.
        SeedRow("app", key(STAFF), STAFF, None, None, None, dirty=True),
        # A removal, held by the guard.
        SeedRow("app", key(CAROL), None, None, CAROL, "r-3", dirty=True),
        SeedRow("other", key(ALICE), ALICE, True, None, None, dirty=True),
    ],
    holds=[SeedHold("app", frozenset({key(CAROL)}), 1_700_000_000.0, approved=True)],
    meta={"marker": "kept"},
)


async def assert_seed(store: Store) -> None:
    """Everything in :data:`SEED` reads back through the protocol."""
    assert await store.committed() == Committed(
        "snap-7", {key(o): upsert(o)[1] for o in (ALICE, BOB, STAFF)}
    )
    assert await store.get_meta("snapshot_committed_at") == repr(1_700_000_000.5)
    assert await store.get_meta("marker") == "kept"
    assert await store.records([key(ALICE), key(STAFF)]) == {key(ALICE): ALICE, key(STAFF): STAFF}
    assert await store.find_user("alice") == ALICE
    assert await store.find_user("alice.smith@example.ORG") == ALICE
    assert await store.find_user("BOB") == BOB
    assert await store.granted("app", "1") is True
    assert await store.granted("app", "2") is False
    assert await store.target_index("app") == TargetIndex(
        {
            key(ALICE): upsert(ALICE)[1],
            key(BOB): upsert(BOB)[1],
            key(STAFF): upsert(STAFF)[1],
            key(CAROL): None,
        },
        {"1"},
    )
    rows = await store.rows("app", [key(ALICE), key(BOB), key(STAFF), key(CAROL)])
    assert (rows[key(ALICE)].written, rows[key(ALICE)].remote_id) == (ALICE, "r-1")
    assert (rows[key(BOB)].desired, rows[key(BOB)].written, rows[key(BOB)].attempts) == (
        BOB,
        BOB_BEFORE,
        2,
    )
    assert (rows[key(CAROL)].desired, rows[key(CAROL)].written) == (None, CAROL)
    due = await store.due("app", 1_700_000_000.0, 10)
    assert [r.key for r in due] == [key(STAFF), key(CAROL)]
    assert await store.counts("app") == (3, 1)
    assert await store.problems("app", 10) == [
        ObjectStatus(key(BOB), "failed", 2, "HTTP 503", 1_700_000_100.0)
    ]
    assert await store.hold("app") == Hold("app", frozenset({key(CAROL)}), 1_700_000_000.0, True)
    assert await store.approved_holds() == ["app"]
    assert [r.key for r in await store.due("other", 0.0, 10)] == [key(ALICE)]


async def test_a_new_store_is_at_the_latest_version(store_factory: StoreFactory) -> None:
    await store_factory.open()
    assert await store_factory.schema_version() == store_factory.latest_version


async def test_data_written_at_the_latest_version_reads_back(store_factory: StoreFactory) -> None:
    # Checks the seed itself against today's schema, so the upgrade tests mean something.
    await store_factory.create_at(store_factory.latest_version)
    await store_factory.seed(SEED)
    await assert_seed(await store_factory.open())


async def test_every_older_version_upgrades_and_keeps_its_data(
    store_factory: StoreFactory,
) -> None:
    latest = store_factory.latest_version
    assert latest >= 2
    for version in range(1, latest):
        factory = await store_factory.another(f"at-{version}")
        await factory.create_at(version)
        assert await factory.schema_version() == version
        await factory.seed(SEED)
        try:
            store = await factory.open()
            assert await factory.schema_version() == latest, f"from version {version}"
            await assert_seed(store)
            # And it works on as a current store.
            dave = user("4", username="Dave")
            await store.commit("snap-8", [upsert(dave)], [], {"app": plan(want(dave))})
            assert await store.find_user("dave") == dave
            assert await store.find_user("alice") == ALICE
            await store.aclose()
            # Opening an upgraded store again changes nothing.
            again = await factory.open()
            assert await factory.schema_version() == latest
            assert await again.find_user("dave") == dave
        finally:
            await factory.aclose()


async def test_a_store_newer_than_the_code_is_refused(store_factory: StoreFactory) -> None:
    store = await store_factory.open()
    await store.set_meta("marker", "kept")
    await store.aclose()
    latest = store_factory.latest_version
    newer = latest + 1
    await store_factory.set_schema_version(newer)
    with pytest.raises(StateError) as refused:
        await store_factory.open()
    message = str(refused.value)
    assert f"schema version {newer}" in message
    assert f"expects schema version {latest}" in message
    # Refused means untouched: a newer provisiond can still use it.
    assert await store_factory.schema_version() == newer
    await store_factory.set_schema_version(latest)
    assert await (await store_factory.open()).get_meta("marker") == "kept"
