"""The provisioning log and the operators' decisions on held keys, on every backend."""

from __future__ import annotations

import pytest

from daemon.model import content_hash
from daemon.store import (
    APPROVED,
    REJECTED,
    Decision,
    LogEntry,
    Settled,
    Store,
    TargetPlan,
)
from tests.store.data import failed, group, key, ok, plan, upsert, user, want

ALICE = user("alice")
BOB = user("bob")
STAFF = group("staff", "alice", "bob")


def entry(n: int, target: str = "app", obj_id: str = "alice", **fields: object) -> LogEntry:
    return LogEntry(float(n), target, ("user", obj_id), "planned", **fields)  # type: ignore[arg-type]


class TestLogEntries:
    async def test_entries_written_with_a_commit_read_back_newest_first(
        self, store: Store
    ) -> None:
        first = entry(
            1, cycle="c1", changes=("user_changed",), attributes=("title", "manager_id")
        )
        await store.commit("v1", [upsert(ALICE)], [], {"app": plan(want(ALICE))}, log=[first])
        second = LogEntry(
            2.0, "app", ("user", "alice"), "failed", "c2", ("user_changed",), ("title",),
            "PATCH", "/Users/r-1", 503, "HTTP 503: try later",
        )  # fmt: skip
        await store.record(
            "app", [ok(key(ALICE), content_hash(ALICE))], 2.0, log=[second]
        )
        got = await store.log_entries()
        assert [e.outcome for e in got] == ["failed", "planned"]
        assert got[0].id is not None and got[1].id is not None and got[0].id > got[1].id
        assert got[1] == LogEntry(
            1.0, "app", ("user", "alice"), "planned", "c1", ("user_changed",),
            ("title", "manager_id"), id=got[1].id,
        )  # fmt: skip
        assert (got[0].method, got[0].path, got[0].status, got[0].error) == (
            "PATCH", "/Users/r-1", 503, "HTTP 503: try later",
        )  # fmt: skip

    async def test_filters_and_pages(self, store: Store) -> None:
        log = [entry(i, target="app" if i % 2 else "other", obj_id=f"u{i % 3}") for i in range(12)]
        await store.commit("v1", [], [], {}, log=log)
        mine = await store.log_entries(target="app", key=("user", "u1"))
        assert [e.at for e in mine] == [7.0, 1.0]
        page1 = await store.log_entries(limit=5)
        page2 = await store.log_entries(limit=5, before=page1[-1].id)
        assert [e.at for e in page1 + page2] == [float(i) for i in range(11, 1, -1)]
        assert await store.log_entries(key=("group", "u1")) == []

    async def test_a_failed_commit_writes_no_entry(self, store: Store) -> None:
        # The log goes with the outcome: a commit that fails leaves neither.
        bad = LogEntry(1.0, "app", ("user", "alice"), "planned", status=None)
        with pytest.raises(Exception):  # noqa: B017 - the backend's own error
            await store.commit(
                "v1", [upsert(ALICE)], [], {"app": plan(want(ALICE))},
                log=[bad, LogEntry(1.0, None, ("user", "x"), "planned")],  # type: ignore[arg-type]
            )  # fmt: skip
        assert await store.log_entries() == []
        assert (await store.committed()).version is None

    async def test_purge_goes_in_bounded_batches_oldest_first(self, store: Store) -> None:
        await store.commit("v1", [], [], {}, log=[entry(i) for i in range(25)])
        assert await store.purge_log(20.0, 8) == 8
        assert await store.purge_log(20.0, 8) == 8
        assert await store.purge_log(20.0, 8) == 4
        assert await store.purge_log(20.0, 8) == 0
        assert [e.at for e in await store.log_entries()] == [24.0, 23.0, 22.0, 21.0, 20.0]


class TestDecisions:
    async def held(self, store: Store) -> None:
        await store.commit(
            "v1",
            [upsert(ALICE), upsert(BOB), upsert(STAFF)],
            [],
            {"app": plan(hold=frozenset({key(ALICE), key(BOB)}))},
        )

    async def test_only_held_keys_are_decided_and_logged(self, store: Store) -> None:
        await self.held(store)
        decided = await store.decide(
            "app", [key(BOB), key(STAFF), ("user", "nobody")], REJECTED, "ops", 5.0
        )
        assert decided == [key(BOB)]
        assert await store.decisions("app") == {
            key(BOB): Decision(key(BOB), REJECTED, "ops", 5.0, content_hash(BOB))
        }
        assert await store.decisions("other") == {}
        [logged] = await store.log_entries()
        assert (logged.key, logged.outcome, logged.actor, logged.at) == (
            key(BOB), REJECTED, "ops", 5.0,
        )  # fmt: skip
        # A decision not yet used by a plan makes the next cycle plan.
        assert await store.approved_holds() == ["app"]

    async def test_a_target_without_a_hold_decides_nothing(self, store: Store) -> None:
        assert await store.decide("app", [key(ALICE)], APPROVED, "ops", 1.0) == []
        assert await store.log_entries() == []

    async def test_a_decision_can_be_changed_and_is_settled_by_a_plan(self, store: Store) -> None:
        await self.held(store)
        await store.decide("app", [key(ALICE), key(BOB)], REJECTED, "ops", 5.0)
        await store.decide("app", [key(ALICE)], APPROVED, "lead", 6.0)
        got = await store.decisions("app")
        assert (got[key(ALICE)].decision, got[key(ALICE)].actor) == (APPROVED, "lead")
        await store.commit(
            "v2",
            [],
            [],
            {
                "app": TargetPlan(
                    [], [], None,
                    (Settled(key(ALICE), 6.0, False), Settled(key(BOB), 5.0, True),
                     # Made at another time: a newer decision is not touched.
                     Settled(key(STAFF), 1.0, False)),
                )
            },
        )  # fmt: skip
        assert await store.decisions("app") == {
            key(BOB): Decision(key(BOB), REJECTED, "ops", 5.0, content_hash(BOB), applied=True)
        }
        assert await store.approved_holds() == []
        # A rejected key can still be approved after the hold moved on.
        assert await store.decide("app", [key(BOB)], APPROVED, "ops", 7.0) == [key(BOB)]

    async def test_a_rejection_of_a_removed_object_binds_to_no_hash(self, store: Store) -> None:
        await store.commit("v1", [], [], {"app": plan(hold=frozenset({("user", "gone")}))})
        await store.decide("app", [("user", "gone")], REJECTED, "ops", 1.0)
        assert (await store.decisions("app"))[("user", "gone")].directory_hash is None


class TestExplainReads:
    async def test_groups_and_one_target_object(self, store: Store) -> None:
        await store.commit(
            "v1", [upsert(ALICE), upsert(STAFF)], [], {"app": plan(want(ALICE))}
        )
        assert await store.groups() == [STAFF]
        row = await store.target_object("app", key(ALICE))
        assert row is not None
        assert (row.row.desired, row.active, row.dirty, row.row.attempts) == (ALICE, True, True, 0)
        await store.record(
            "app",
            [failed(key(ALICE), content_hash(ALICE), "HTTP 503", 50.0)],
            10.0,
        )
        row = await store.target_object("app", key(ALICE))
        assert row is not None
        assert (row.last_error, row.next_attempt_at, row.row.attempts) == ("HTTP 503", 50.0, 1)
        assert row.updated_at == 10.0
        assert await store.target_object("app", key(STAFF)) is None
        assert await store.target_object("other", key(ALICE)) is None
