"""The two store methods the admin console adds: retry_now and search_users, on every backend."""

from __future__ import annotations

from daemon.model import content_hash
from daemon.store import Store
from tests.store.data import failed, group, ok, plan, upsert, user, want


class TestRetryNow:
    async def test_cuts_the_backoff_of_failed_rows_only(self, store: Store) -> None:
        a, b, c = user("a"), user("b"), user("c")
        await store.commit("v1", [], [], {"app": plan(want(a), want(b), want(c))})
        await store.record(
            "app",
            [failed(("user", "a"), content_hash(a), "503", 10_000.0),
             ok(("user", "b"), content_hash(b))],
            1.0,
        )  # fmt: skip
        keys = [("user", "a"), ("user", "b"), ("user", "c"), ("user", "nobody")]
        # b was delivered, c never failed, nobody is unknown: only a changes.
        assert await store.retry_now("app", keys, 5.0) == 1
        [problem] = await store.problems("app", 10)
        assert (problem.key, problem.next_attempt_at) == (("user", "a"), 5.0)
        assert (problem.attempts, problem.last_error) == (1, "503")
        assert {r.key for r in await store.due("app", 5.0, 10)} == {("user", "a"), ("user", "c")}

    async def test_other_targets_are_left_alone(self, store: Store) -> None:
        a = user("a")
        await store.commit("v1", [], [], {"app": plan(want(a)), "other": plan(want(a))})
        for target in ("app", "other"):
            await store.record(target, [failed(("user", "a"), content_hash(a), "x", 900.0)], 1.0)
        assert await store.retry_now("app", [("user", "a")], 2.0) == 1
        assert [p.next_attempt_at for p in await store.problems("other", 10)] == [900.0]
        assert await store.retry_now("app", [], 2.0) == 0


class TestSearchUsers:
    async def test_by_login_or_record_case_insensitively(self, store: Store) -> None:
        people = [
            user("maria", email="Maria.Berg@example.org", given_name="Maria", family_name="Berg"),
            user("jon", given_name="Jon", family_name="Bergström"),
            user("kim", given_name="Kim", family_name="Ek", department="Bergen office"),
        ]
        await store.commit("v1", [upsert(u) for u in people] + [upsert(group("berg"))], [], {})
        found = await store.search_users("BERG", 10)
        # By username order; the department match is a candidate too (callers filter).
        assert [u.username for u in found] == ["jon", "kim", "maria"]
        assert [u.username for u in await store.search_users("maria.berg@", 10)] == ["maria"]
        assert await store.search_users("berg", 2) == found[:2]
        assert await store.search_users("nobody", 10) == []

    async def test_like_wildcards_are_literal(self, store: Store) -> None:
        people = [user("a_b"), user("axb"), user("c%d"), user("cxd"), user("e!f")]
        await store.commit("v1", [upsert(u) for u in people], [], {})
        assert [u.username for u in await store.search_users("a_b", 10)] == ["a_b"]
        assert [u.username for u in await store.search_users("c%d", 10)] == ["c%d"]
        assert [u.username for u in await store.search_users("e!f", 10)] == ["e!f"]
