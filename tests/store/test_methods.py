"""What each Store method does: one class per method, on every backend."""

from __future__ import annotations

import time

import anyio
import pytest

from daemon.model import AccountState, content_hash
from daemon.store import (
    PHASE_GROUP,
    PHASE_GROUP_REMOVAL,
    PHASE_USER,
    PHASE_USER_REMOVAL,
    Committed,
    Deactivation,
    Key,
    Link,
    LinkChanges,
    ObjectStatus,
    Store,
    TargetIndex,
    TargetLinks,
    phase,
)
from tests.store.backends import StoreFactory
from tests.store.data import failed, group, ok, plan, removal, upsert, user, want
from tests.store.state import read_state


async def deliver_all(store: Store, target: str, now: float = 0.0) -> None:
    """Record every due row of ``target`` as delivered, as a target that accepts all would."""
    rows = await store.due(target, now, 10_000)
    await store.record(target, [ok(r.key, r.desired_hash, f"r-{r.key[1]}") for r in rows], now)


class TestOpen:
    async def test_a_new_store_is_empty(self, store: Store) -> None:
        assert await store.committed() == Committed(None, {})
        assert await store.target_index("app") == TargetIndex()
        assert await store.due("app", time.time(), 10) == []
        assert await store.rows("app", None) == {}
        assert await store.counts("app") == (0, 0)
        assert await store.problems("app", 10) == []
        assert await store.hold("app") is None
        assert await store.approved_holds() == []
        assert await store.get_meta("snapshot_version") is None

    async def test_everything_survives_a_reopen(self, store_factory: StoreFactory) -> None:
        store = await store_factory.open()
        alice, staff = user("alice"), group("staff", "alice")
        await store.commit(
            "v1",
            [upsert(alice), upsert(staff)],
            [],
            {"app": plan(want(alice), want(staff), hold=frozenset({("user", "old")}))},
        )
        await store.record(
            "app", [failed(("group", "staff"), content_hash(staff), "503", 99.0)], 1.0
        )
        await store.record("app", [ok(("user", "alice"), content_hash(alice), "r-1")], 1.0)
        await store.approve("app")
        await store.set_meta("marker", "kept")
        before = await read_state(store, ("app",), ("marker",))
        await store.aclose()
        again = await store_factory.open()
        assert await read_state(again, ("app",), ("marker",)) == before

    async def test_aclose_twice_is_harmless(self, store_factory: StoreFactory) -> None:
        store = await store_factory.open()
        await store.aclose()
        await store.aclose()


class TestCommitted:
    async def test_the_snapshot_is_replaced_by_each_commit(self, store: Store) -> None:
        a, b, c = user("a"), user("b"), group("c", "a")
        await store.commit("v1", [upsert(a), upsert(b), upsert(c)], [], {})
        assert await store.committed() == Committed(
            "v1",
            {
                ("user", "a"): content_hash(a),
                ("user", "b"): content_hash(b),
                ("group", "c"): content_hash(c),
            },
        )
        a2 = user("a", title="Boss")
        await store.commit("v2", [upsert(a2)], [("user", "b")], {})
        assert await store.committed() == Committed(
            "v2", {("user", "a"): content_hash(a2), ("group", "c"): content_hash(c)}
        )

    async def test_a_commit_records_when_it_happened(self, store: Store) -> None:
        before = time.time()
        await store.commit("v1", [], [], {})
        at = await store.get_meta("snapshot_committed_at")
        assert at is not None
        assert before - 1 <= float(at) <= time.time() + 1
        assert await store.get_meta("snapshot_version") == "v1"

    async def test_deleting_an_unknown_key_is_harmless(self, store: Store) -> None:
        await store.commit("v1", [], [("user", "nobody")], {})
        assert await store.committed() == Committed("v1", {})


class TestRecords:
    async def test_returns_the_committed_records_and_leaves_out_missing_ones(
        self, store: Store
    ) -> None:
        a, g = user("a", title="T"), group("g", "a", name="G")
        await store.commit("v1", [upsert(a), upsert(g)], [], {})
        got = await store.records([("user", "a"), ("group", "g"), ("user", "zz"), ("group", "a")])
        assert got == {("user", "a"): a, ("group", "g"): g}
        assert await store.records([]) == {}

    async def test_deleted_and_replaced_records(self, store: Store) -> None:
        a, b = user("a"), user("b")
        await store.commit("v1", [upsert(a), upsert(b)], [], {})
        a2 = user("a", state=AccountState.SUSPENDED)
        await store.commit("v2", [upsert(a2)], [("user", "b")], {})
        assert await store.records([("user", "a"), ("user", "b")]) == {("user", "a"): a2}

    async def test_many_keys_at_once(self, store: Store) -> None:
        people = [user(f"u{i:04d}") for i in range(1500)]
        await store.commit("v1", [upsert(p) for p in people], [], {})
        got = await store.records([("user", p.id) for p in people])
        assert got == {("user", p.id): p for p in people}


class TestFindUser:
    async def test_by_username_or_email_ignoring_case_and_spaces(self, store: Store) -> None:
        ann = user("1", username="Ann.Lee", email="Ann.Lee@Example.ORG")
        asa = user("2", username="ÅSA", email="asa@example.org")
        await store.commit("v1", [upsert(ann), upsert(asa), upsert(group("ann.lee"))], [], {})
        for login in (
            "ann.lee",
            "ANN.LEE",
            " Ann.Lee ",
            "ann.lee@example.org",
            "ANN.LEE@EXAMPLE.org",
        ):
            assert await store.find_user(login) == ann, login
        assert await store.find_user("åsa") == asa
        assert await store.find_user("ann") is None
        assert await store.find_user("") is None

    async def test_a_username_match_wins_over_an_email_match(self, store: Store) -> None:
        # user 1's email is literally user 2's username.
        one = user("1", username="first", email="second")
        two = user("2", username="second", email="two@example.org")
        await store.commit("v1", [upsert(one), upsert(two)], [], {})
        assert await store.find_user("Second") == two

    async def test_follows_the_committed_snapshot(self, store: Store) -> None:
        await store.commit("v1", [upsert(user("1", username="old", email="old@x.org"))], [], {})
        renamed = user("1", username="new", email="new@x.org")
        await store.commit("v2", [upsert(renamed)], [], {})
        assert await store.find_user("old") is None
        assert await store.find_user("old@x.org") is None
        assert await store.find_user("new@x.org") == renamed
        await store.commit("v3", [], [("user", "1")], {})
        assert await store.find_user("new") is None

    async def test_suspended_users_are_found(self, store: Store) -> None:
        # Whether they may sign in is the directory's question, not the store's.
        sus = user("s", state=AccountState.SUSPENDED)
        await store.commit("v1", [upsert(sus)], [], {})
        assert await store.find_user("s") == sus


class TestGranted:
    async def test_only_an_active_desired_user_of_that_target(self, store: Store) -> None:
        on, off, gone = user("on"), user("off", state=AccountState.SUSPENDED), user("gone")
        await store.commit(
            "v1",
            [],
            [],
            {"app": plan(want(on), want(off), want(gone)), "other": plan(want(off, True))},
        )
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(removal(("user", "gone")))})
        assert await store.granted("app", "on") is True
        assert await store.granted("app", "off") is False
        assert await store.granted("app", "gone") is False
        assert await store.granted("app", "nobody") is False
        assert await store.granted("other", "off") is True
        assert await store.granted("other", "on") is False
        assert await store.granted("nowhere", "on") is False

    async def test_a_group_with_a_user_id_is_not_a_grant(self, store: Store) -> None:
        await store.commit("v1", [], [], {"app": plan(want(group("x")))})
        assert await store.granted("app", "x") is False


class TestTargetIndex:
    async def test_desired_hashes_pending_removals_and_active_users(self, store: Store) -> None:
        a, b, g = user("a"), user("b", state=AccountState.SUSPENDED), group("g", "a")
        await store.commit("v1", [], [], {"app": plan(want(a), want(b), want(g))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(removal(("user", "b")))})
        index = await store.target_index("app")
        assert index.hashes == {
            ("user", "a"): content_hash(a),
            ("user", "b"): None,
            ("group", "g"): content_hash(g),
        }
        assert index.active == {"a"}
        assert await store.target_index("other") == TargetIndex()

    async def test_active_follows_the_plan_not_the_record(self, store: Store) -> None:
        # The assignment scope may make an active directory user inactive here.
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a, active=False))})
        assert (await store.target_index("app")).active == set()


class TestCommitPlans:
    async def test_desired_rows_become_due(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [upsert(a)], [], {"app": plan(want(a))})
        [row] = await store.due("app", 0.0, 10)
        assert (
            row.key,
            row.remote_id,
            row.desired_hash,
            row.desired,
            row.written,
            row.attempts,
        ) == (("user", "a"), None, content_hash(a), a, None, 0)

    async def test_a_plan_only_touches_its_own_target(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"one": plan(want(a))})
        await store.commit("v2", [], [], {"two": plan(want(a))})
        assert set((await store.target_index("one")).hashes) == {("user", "a")}
        assert set((await store.target_index("two")).hashes) == {("user", "a")}

    async def test_the_written_state_again_is_not_dirty(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(want(a))})
        assert await store.due("app", 0.0, 10) == []
        assert await store.counts("app") == (0, 0)

    async def test_a_change_is_due_with_the_last_written_record(self, store: Store) -> None:
        a, a2 = user("a"), user("a", title="New")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(want(a2))})
        [row] = await store.due("app", 0.0, 10)
        assert (row.desired, row.written, row.remote_id) == (a2, a, "r-a")

    async def test_changing_back_to_the_written_state_is_clean_again(self, store: Store) -> None:
        a, a2 = user("a"), user("a", title="New")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(want(a2))})
        await store.commit("v3", [], [], {"app": plan(want(a))})
        assert await store.due("app", 0.0, 10) == []

    async def test_a_new_plan_resets_a_failed_row(self, store: Store) -> None:
        a, a2 = user("a"), user("a", title="New")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await store.record("app", [failed(("user", "a"), content_hash(a), "503", 10_000.0)], 1.0)
        await store.commit("v2", [], [], {"app": plan(want(a2))})
        [row] = await store.due("app", 1.0, 10)
        assert (row.desired, row.attempts) == (a2, 0)
        assert await store.problems("app", 10) == []
        assert await store.counts("app") == (1, 0)

    async def test_removing_a_written_object_is_due_with_its_last_record(
        self, store: Store
    ) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(removal(("user", "a")))})
        [row] = await store.due("app", 0.0, 10)
        assert (row.desired_hash, row.desired, row.written, row.remote_id) == (None, None, a, "r-a")

    async def test_removing_an_object_never_written_forgets_it(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await store.record("app", [failed(("user", "a"), content_hash(a), "503", 0.0)], 1.0)
        await store.commit("v2", [], [], {"app": plan(removal(("user", "a")))})
        assert await store.target_index("app") == TargetIndex()
        assert await store.due("app", 0.0, 10) == []

    async def test_released_objects_are_forgotten_without_delivery(self, store: Store) -> None:
        g, h = group("g"), group("h")
        await store.commit("v1", [], [], {"app": plan(want(g), want(h))})
        await deliver_all(store, "app")
        await store.commit(
            "v2", [], [], {"app": plan(released=[("group", "g"), ("group", "nope")])}
        )
        assert set((await store.target_index("app")).hashes) == {("group", "h")}
        assert await store.rows("app", [("group", "g")]) == {}
        assert await store.due("app", 0.0, 10) == []

    async def test_an_empty_commit_changes_only_the_version(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [upsert(a)], [], {"app": plan(want(a))})
        before = await read_state(store, ("app",))
        await store.commit("v2", [], [], {})
        after = await read_state(store, ("app",))
        assert after.committed == Committed("v2", before.committed.hashes)
        assert after.targets == before.targets


class TestHold:
    async def test_a_plan_sets_replaces_and_clears_the_hold(self, store: Store) -> None:
        held = frozenset({("user", "a"), ("user", "b")})
        started = time.time()
        await store.commit("v1", [], [], {"app": plan(hold=held)})
        hold = await store.hold("app")
        assert hold is not None
        assert (hold.target, hold.keys, hold.approved) == ("app", held, False)
        assert started - 1 <= hold.created_at <= time.time() + 1
        # The same keys again: the hold keeps its age.
        await anyio.sleep(0.02)
        await store.commit("v2", [], [], {"app": plan(hold=held)})
        again = await store.hold("app")
        assert again is not None and again.created_at == hold.created_at
        # Other keys: a new hold.
        await store.commit("v3", [], [], {"app": plan(hold=frozenset({("user", "c")}))})
        other = await store.hold("app")
        assert other is not None and other.keys == {("user", "c")}
        assert other.created_at > hold.created_at
        # A target left out of a commit keeps its hold; ``None`` clears it.
        await store.commit("v4", [], [], {"else": plan()})
        assert await store.hold("app") == other
        await store.commit("v5", [], [], {"app": plan()})
        assert await store.hold("app") is None

    async def test_holds_are_per_target(self, store: Store) -> None:
        await store.commit("v1", [], [], {"a": plan(hold=frozenset({("user", "x")})), "b": plan()})
        assert await store.hold("b") is None
        assert await store.hold("a") is not None


class TestApprove:
    async def test_approving_nothing(self, store: Store) -> None:
        assert await store.approve("app") == 0
        assert await store.approved_holds() == []

    async def test_approve_marks_the_hold_and_counts_its_keys(self, store: Store) -> None:
        held = frozenset({("user", "a"), ("group", "g")})
        await store.commit("v1", [], [], {"app": plan(hold=held), "b": plan(hold=held)})
        assert await store.approve("app") == 2
        hold = await store.hold("app")
        assert hold is not None and (hold.keys, hold.approved) == (held, True)
        assert await store.approved_holds() == ["app"]
        assert await store.approve("app") == 2
        assert await store.approved_holds() == ["app"]
        assert await store.approve("b") == 2
        assert sorted(await store.approved_holds()) == ["app", "b"]

    async def test_a_new_hold_needs_a_new_approval(self, store: Store) -> None:
        held = frozenset({("user", "a")})
        await store.commit("v1", [], [], {"app": plan(hold=held)})
        await store.approve("app")
        await store.commit("v2", [], [], {"app": plan(hold=held | {("user", "b")})})
        hold = await store.hold("app")
        assert hold is not None and hold.approved is False
        assert await store.approved_holds() == []

    async def test_the_same_hold_written_again_keeps_its_approval(self, store: Store) -> None:
        """A cycle that read the hold before an approval writes the same keys back: the
        approval stands (a cycle that used an approval never holds those keys again)."""
        held = frozenset({("user", "a")})
        await store.commit("v1", [], [], {"app": plan(hold=held)})
        since = (await store.hold("app")).created_at  # type: ignore[union-attr]
        assert await store.approve("app") == 1
        await store.commit("v2", [], [], {"app": plan(hold=held)})
        hold = await store.hold("app")
        assert hold is not None and hold.approved is True and hold.created_at == since
        assert await store.approved_holds() == ["app"]

    async def test_an_approval_for_keys_approves_only_that_hold(self, store: Store) -> None:
        held = frozenset({("user", "a"), ("user", "b")})
        await store.commit("v1", [], [], {"app": plan(hold=held)})
        assert await store.approve("app", frozenset({("user", "a")})) == 0
        assert await store.approve("app", held | {("user", "c")}) == 0
        assert await store.approved_holds() == []
        assert await store.approve("app", held) == 2
        assert await store.approved_holds() == ["app"]
        assert await store.approve("other", held) == 0

    async def test_a_released_hold_is_no_longer_approved(self, store: Store) -> None:
        await store.commit("v1", [], [], {"app": plan(hold=frozenset({("user", "a")}))})
        await store.approve("app")
        await store.commit("v2", [], [], {"app": plan()})
        assert await store.approved_holds() == []
        assert await store.approve("app") == 0


class TestDue:
    async def test_delivery_order_is_by_phase(self, store: Store) -> None:
        u_old, g_old = user("u-old"), group("g-old")
        await store.commit("v1", [], [], {"app": plan(want(u_old), want(g_old))})
        await deliver_all(store, "app")
        rows = [
            removal(("user", "u-old")),
            want(group("g-new")),
            removal(("group", "g-old")),
            want(user("u-new")),
        ]
        await store.commit("v2", [], [], {"app": plan(*rows)})
        due = await store.due("app", 0.0, 10)
        phases = [phase(r.key[0], r.desired is None) for r in due]
        assert phases == [PHASE_USER, PHASE_GROUP, PHASE_GROUP_REMOVAL, PHASE_USER_REMOVAL]
        assert [r.key for r in due] == [
            ("user", "u-new"),
            ("group", "g-new"),
            ("group", "g-old"),
            ("user", "u-old"),
        ]

    async def test_limit_takes_the_earliest_phases_first(self, store: Store) -> None:
        groups = [want(group(f"g{i}")) for i in range(5)]
        users = [want(user(f"u{i}")) for i in range(5)]
        await store.commit("v1", [], [], {"app": plan(*groups, *users)})
        first = await store.due("app", 0.0, 3)
        assert len(first) == 3 and {r.key[0] for r in first} == {"user"}
        second = await store.due("app", 0.0, 7)
        assert [r.key[0] for r in second] == ["user"] * 5 + ["group"] * 2
        assert await store.due("app", 0.0, 0) == []

    async def test_a_failed_row_waits_for_its_retry_time(self, store: Store) -> None:
        a, b = user("a"), user("b")
        await store.commit("v1", [], [], {"app": plan(want(a), want(b))})
        await store.record("app", [failed(("user", "a"), content_hash(a), "503", 100.0)], 50.0)
        assert [r.key for r in await store.due("app", 99.9, 10)] == [("user", "b")]
        due = await store.due("app", 100.0, 10)
        assert {r.key for r in due} == {("user", "a"), ("user", "b")}
        assert {r.key: r.attempts for r in due} == {("user", "a"): 1, ("user", "b"): 0}

    async def test_only_dirty_rows_of_that_target(self, store: Store) -> None:
        a, b = user("a"), user("b")
        await store.commit("v1", [], [], {"app": plan(want(a), want(b)), "other": plan(want(a))})
        await store.record("app", [ok(("user", "a"), content_hash(a))], 0.0)
        assert [r.key for r in await store.due("app", 0.0, 10)] == [("user", "b")]
        assert [r.key for r in await store.due("other", 0.0, 10)] == [("user", "a")]
        assert await store.due("nowhere", 0.0, 10) == []


class TestRows:
    async def test_the_rows_asked_for_dirty_or_not(self, store: Store) -> None:
        a, b = user("a"), user("b")
        await store.commit("v1", [], [], {"app": plan(want(a), want(b))})
        await store.record("app", [ok(("user", "a"), content_hash(a), "r-a")], 0.0)
        got = await store.rows("app", [("user", "a"), ("user", "b"), ("user", "zz")])
        assert set(got) == {("user", "a"), ("user", "b")}
        assert (got[("user", "a")].written, got[("user", "a")].remote_id) == (a, "r-a")
        assert (got[("user", "b")].written, got[("user", "b")].desired) == (None, b)
        assert await store.rows("app", []) == {}
        assert await store.rows("other", [("user", "a")]) == {}

    async def test_none_means_every_dirty_row(self, store: Store) -> None:
        a, b = user("a"), user("b")
        await store.commit("v1", [], [], {"app": plan(want(a), want(b))})
        await store.record("app", [ok(("user", "a"), content_hash(a))], 0.0)
        assert set(await store.rows("app", None)) == {("user", "b")}

    async def test_rows_agree_with_due(self, store: Store) -> None:
        people = [user(f"u{i:04d}") for i in range(1200)]
        await store.commit("v1", [], [], {"app": plan(*[want(p) for p in people])})
        due = {r.key: r for r in await store.due("app", 0.0, 10_000)}
        assert await store.rows("app", list(due)) == due
        assert await store.rows("app", None) == due


class TestRecord:
    async def test_a_delivery_makes_desired_the_written_state(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await store.record("app", [ok(("user", "a"), content_hash(a), "r-a")], 5.0)
        row = (await store.rows("app", [("user", "a")]))[("user", "a")]
        assert (row.written, row.remote_id, row.attempts) == (a, "r-a", 0)
        assert await store.counts("app") == (0, 0)

    async def test_a_delivery_without_a_remote_id_keeps_the_known_one(self, store: Store) -> None:
        a, a2 = user("a"), user("a", title="X")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await store.record("app", [ok(("user", "a"), content_hash(a), "r-a")], 5.0)
        await store.commit("v2", [], [], {"app": plan(want(a2))})
        await store.record("app", [ok(("user", "a"), content_hash(a2), None)], 6.0)
        row = (await store.rows("app", [("user", "a")]))[("user", "a")]
        assert (row.written, row.remote_id) == (a2, "r-a")

    async def test_a_failure_counts_attempts_and_sets_the_retry(self, store: Store) -> None:
        a = user("a")
        k: Key = ("user", "a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await store.record("app", [failed(k, content_hash(a), "HTTP 503", 60.0)], 0.0)
        await store.record("app", [failed(k, content_hash(a), "HTTP 502", 120.0, "r-a")], 60.0)
        await store.record("app", [failed(k, content_hash(a), "HTTP 500", 240.0)], 120.0)
        assert await store.problems("app", 10) == [ObjectStatus(k, "failed", 3, "HTTP 500", 240.0)]
        row = (await store.rows("app", [k]))[k]
        # A failed create may still have created the object: its id is kept.
        assert (row.attempts, row.written, row.remote_id) == (3, None, "r-a")
        assert await store.counts("app") == (1, 1)
        await store.record("app", [ok(k, content_hash(a))], 240.0)
        assert await store.problems("app", 10) == []
        assert await store.counts("app") == (0, 0)
        assert (await store.rows("app", [k]))[k].remote_id == "r-a"

    async def test_a_delivered_removal_forgets_the_object(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(removal(("user", "a")))})
        await store.record("app", [ok(("user", "a"), None)], 1.0)
        assert await store.target_index("app") == TargetIndex()
        assert await store.rows("app", [("user", "a")]) == {}

    async def test_a_failed_removal_stays_due(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(removal(("user", "a")))})
        await store.record("app", [failed(("user", "a"), None, "409", 5.0)], 1.0)
        [row] = await store.due("app", 5.0, 10)
        assert (row.desired, row.written, row.attempts) == (None, a, 1)

    async def test_a_delivery_of_an_outdated_state_leaves_the_new_one_due(
        self, store: Store
    ) -> None:
        a, a2 = user("a"), user("a", title="Changed meanwhile")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        [row] = await store.due("app", 0.0, 10)
        await store.commit("v2", [], [], {"app": plan(want(a2))})
        await store.record("app", [ok(row.key, row.desired_hash, "r-a")], 1.0)
        [again] = await store.due("app", 1.0, 10)
        assert (again.desired, again.written) == (a2, None)
        # The object now exists remotely: its id must not be lost, or the
        # next delivery would create it a second time.
        assert again.remote_id == "r-a"

    async def test_a_removal_delivered_after_a_comeback_keeps_the_object(
        self, store: Store
    ) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [], {"app": plan(removal(("user", "a")))})
        await store.commit("v3", [], [], {"app": plan(want(a))})
        await store.record("app", [ok(("user", "a"), None)], 1.0)
        assert (await store.target_index("app")).hashes == {("user", "a"): content_hash(a)}

    async def test_results_for_unknown_objects_or_nothing_are_harmless(self, store: Store) -> None:
        await store.record("app", [], 0.0)
        await store.record(
            "app", [ok(("user", "ghost"), "h"), failed(("user", "x"), "h", "e", 1.0)], 0.0
        )
        assert await store.rows("app", [("user", "ghost"), ("user", "x")]) == {}

    async def test_a_batch_of_mixed_results(self, store: Store) -> None:
        people = [user(f"u{i}") for i in range(6)]
        await store.commit("v1", [], [], {"app": plan(*[want(p) for p in people])})
        results = [
            ok(("user", p.id), content_hash(p), f"r{i}")
            if i % 2
            else failed(("user", p.id), content_hash(p), f"e{i}", 10.0)
            for i, p in enumerate(people)
        ]
        await store.record("app", results, 1.0)
        assert await store.counts("app") == (3, 3)
        assert {r.key[1] for r in await store.due("app", 10.0, 10)} == {"u0", "u2", "u4"}


class TestCountsAndProblems:
    async def test_counts_dirty_and_failed_per_target(self, store: Store) -> None:
        people = [user(f"u{i}") for i in range(5)]
        await store.commit(
            "v1", [], [], {"app": plan(*[want(p) for p in people]), "other": plan(want(people[0]))}
        )
        assert await store.counts("app") == (5, 0)
        await store.record("app", [ok(("user", "u0"), content_hash(people[0]))], 0.0)
        await store.record(
            "app",
            [failed(("user", f"u{i}"), content_hash(people[i]), "x", 9.0) for i in (1, 2)],
            0.0,
        )
        assert await store.counts("app") == (4, 2)
        assert await store.counts("other") == (1, 0)

    async def test_problems_most_attempts_first_up_to_limit(self, store: Store) -> None:
        people = [user(f"u{i}") for i in range(4)]
        await store.commit("v1", [], [], {"app": plan(*[want(p) for p in people])})
        for i, p in enumerate(people[:3]):
            for attempt in range(i + 1):
                await store.record(
                    "app",
                    [failed(("user", p.id), content_hash(p), f"{p.id}/{attempt}", 50.0 + i)],
                    0.0,
                )
        problems = await store.problems("app", 10)
        assert problems == [
            ObjectStatus(("user", "u2"), "failed", 3, "u2/2", 52.0),
            ObjectStatus(("user", "u1"), "failed", 2, "u1/1", 51.0),
            ObjectStatus(("user", "u0"), "failed", 1, "u0/0", 50.0),
        ]
        assert await store.problems("app", 2) == problems[:2]
        assert await store.problems("other", 10) == []


class TestMeta:
    async def test_set_get_and_overwrite(self, store: Store) -> None:
        assert await store.get_meta("k") is None
        await store.set_meta("k", "one")
        assert await store.get_meta("k") == "one"
        await store.set_meta("k", 'two ✓ "quoted"; DROP TABLE meta')
        assert await store.get_meta("k") == 'two ✓ "quoted"; DROP TABLE meta'
        await store.set_meta("empty", "")
        assert await store.get_meta("empty") == ""
        assert await store.get_meta("K") is None

    async def test_meta_is_independent_of_commits(self, store: Store) -> None:
        await store.set_meta("k", "v")
        await store.commit("v1", [], [], {})
        assert await store.get_meta("k") == "v"
        assert await store.get_meta("snapshot_version") == "v1"


class TestTargetLinks:
    """What a target remembers of its remote objects (the one store: no file of its own)."""

    async def test_save_read_overwrite_and_forget(self, store: Store) -> None:
        assert await store.target_links("app") == TargetLinks({}, {})
        body = {"userName": "a@x.example", "name": {"givenName": "Å"}, "active": True}
        await store.save_links(
            "app",
            LinkChanges(
                links={("user", "a"): Link("r-a", body), ("user", "b"): Link(None, {"x": 1})},
                deactivations={"c": Deactivation("r-c", 12.5)},
            ),
        )
        links = await store.target_links("app")
        assert links.links == {
            ("user", "a"): Link("r-a", body),
            ("user", "b"): Link(None, {"x": 1}),
        }
        assert links.deactivations == {"c": Deactivation("r-c", 12.5)}
        await store.save_links(
            "app",
            LinkChanges(
                links={("user", "a"): Link("r-a2", {}), ("user", "b"): None},
                deactivations={"c": None},
            ),
        )
        assert await store.target_links("app") == TargetLinks({("user", "a"): Link("r-a2", {})}, {})
        assert await store.target_links("other") == TargetLinks({}, {})

    async def test_meta_is_per_target_and_saved_with_the_links(self, store: Store) -> None:
        assert await store.target_meta("app", "last_reconcile") is None
        await store.set_target_meta("app", "last_reconcile", "100.5")
        await store.save_links(
            "other", LinkChanges(links={("group", "g"): Link("r-g", {})}, meta={"k": "v"})
        )
        assert await store.target_meta("app", "last_reconcile") == "100.5"
        assert await store.target_meta("other", "last_reconcile") is None
        assert await store.target_meta("other", "k") == "v"
        assert await store.get_meta("k") is None  # not the store's own meta

    async def test_a_released_object_loses_its_link_in_the_same_commit(self, store: Store) -> None:
        g = group("g", "a")
        await store.commit("v1", [upsert(g)], [], {"app": plan(want(g))})
        await deliver_all(store, "app")
        await store.save_links("app", LinkChanges(links={("group", "g"): Link("r-g", {})}))
        await store.commit("v2", [], [], {"app": plan(released=[("group", "g")])})
        assert await store.target_links("app") == TargetLinks({}, {})

    async def test_a_failed_save_changes_nothing(self, store: Store) -> None:
        await store.save_links("app", LinkChanges(links={("user", "a"): Link("r-a", {})}))
        bad = LinkChanges(links={("user", "b"): Link("r-b", {"not json": object()})})
        with pytest.raises(TypeError):
            await store.save_links("app", bad)
        assert await store.target_links("app") == TargetLinks({("user", "a"): Link("r-a", {})}, {})


class TestFailedAttemptThenBack:
    async def test_a_desired_state_back_to_the_written_one_after_a_failure_is_due(
        self, store: Store
    ) -> None:
        """A failed attempt may have changed the application partly (a removal that
        deactivated the user and waits out a grace): what was written is unknown, so
        the old desired state coming back is delivered again, from no written record."""
        a = user("a")
        await store.commit("v1", [upsert(a)], [], {"app": plan(want(a))})
        await deliver_all(store, "app")
        await store.commit("v2", [], [("user", "a")], {"app": plan(removal(("user", "a")))})
        [row] = await store.due("app", 0.0, 10)
        await store.record("app", [failed(row.key, None, "waiting for the grace", 50.0)], 0.0)
        await store.commit("v3", [upsert(a)], [], {"app": plan(want(a))})
        [again] = await store.due("app", 100.0, 10)
        assert (again.key, again.desired, again.written, again.attempts) == (
            ("user", "a"),
            a,
            None,
            0,
        )
