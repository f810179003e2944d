from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest

from daemon.engine import Engine
from daemon.model import AccountState, Snapshot, make_group

from .support import FedSource, RecordingTarget, engine, slot, user

BOUND = "AlexisHR Users"


def org(n: int = 5, bound: list[str] | None = None, **overrides: object) -> Snapshot:
    users = [user(f"u{i}") for i in range(n)]
    members = bound if bound is not None else [u.id for u in users]
    return Snapshot.of(
        users,
        [make_group("g-app", BOUND, members), make_group("g-eng", "Engineering", ["u0"])],
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Engine, FedSource, RecordingTarget]]:
    source = FedSource(org())
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND])], retry_base=0.01, retry_max=0.05)
    yield eng, source, target
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_first_cycle_provisions_the_scope_and_the_second_is_quiet(world) -> None:
    eng, source, target = world  # noqa: RUF059
    report = await eng.cycle()
    assert report.result == "ok"
    assert set(target.holding) == {("user", f"u{i}") for i in range(5)} | {("group", "g-app")}
    # Engineering is not bound: implicitly out of the target.
    assert ("group", "g-eng") not in target.holding
    calls = len(target.calls)
    report = await eng.cycle()
    assert report.result == "quiet"
    assert len(target.calls) == calls


async def test_lifecycle_through_scope(world) -> None:
    eng, source, target = world
    await eng.cycle()
    # u1 changes title: one user_changed naming the field.
    snap = org()
    snap.users["u1"] = msgspec.structs.replace(snap.users["u1"], title="CTO")
    source.set(snap)
    target.calls.clear()
    await eng.cycle()
    assert target.changes() == ["user_changed"]
    assert target.calls[0][0].changes[0].fields == ("title",)  # type: ignore[union-attr]

    # u2 leaves every bound group: deactivated (unassigned), not removed.
    source.set(org(bound=["u0", "u1", "u3", "u4"]))
    target.calls.clear()
    await eng.cycle()
    assert sorted(target.changes()) == ["members_removed", "user_changed", "user_suspended"]
    assert target.holding[("user", "u2")].state == AccountState.UNASSIGNED  # type: ignore[union-attr]

    # u2 rejoins: reactivated.
    source.set(org())
    target.calls.clear()
    await eng.cycle()
    assert "user_reactivated" in target.changes()
    assert target.holding[("user", "u2")].state == AccountState.ACTIVE  # type: ignore[union-attr]

    # u4 is removed from the directory: removed, after the group update.
    source.set(
        Snapshot.of(
            [user(f"u{i}") for i in range(4)],
            [make_group("g-app", BOUND, ["u0", "u1", "u2", "u3"])],
        )
    )
    target.calls.clear()
    await eng.cycle()
    assert target.changes() == ["members_removed", "user_removed"]
    assert ("user", "u4") not in target.holding


async def test_a_user_outside_every_bound_group_is_never_provisioned(world) -> None:
    eng, source, target = world
    source.set(org(bound=["u0"]))
    await eng.cycle()
    assert {k for k in target.holding if k[0] == "user"} == {("user", "u0")}


async def test_a_suspended_user_nobody_provisioned_is_not_created(world) -> None:
    eng, source, target = world
    snap = org()
    snap.users["u3"] = msgspec.structs.replace(snap.users["u3"], state=AccountState.SUSPENDED)
    source.set(snap)
    await eng.cycle()
    assert ("user", "u3") not in target.holding
    assert "u3" not in target.holding[("group", "g-app")].members  # type: ignore[union-attr]


async def test_a_user_suspended_later_leaves_the_targets_groups_as_one_suspended_first(
    world,
) -> None:
    """The rule both cases follow: a target's groups list only its active users."""
    eng, source, target = world
    await eng.cycle()
    assert "u3" in target.holding[("group", "g-app")].members  # type: ignore[union-attr]
    snap = org()
    snap.users["u3"] = msgspec.structs.replace(snap.users["u3"], state=AccountState.SUSPENDED)
    source.set(snap)
    target.calls.clear()
    await eng.cycle()
    assert sorted(target.changes()) == ["members_removed", "user_suspended"]
    assert target.holding[("user", "u3")].state == AccountState.SUSPENDED  # type: ignore[union-attr]
    assert "u3" not in target.holding[("group", "g-app")].members  # type: ignore[union-attr]

    # Active again: back in the group.
    source.set(org())
    target.calls.clear()
    await eng.cycle()
    assert sorted(target.changes()) == ["members_added", "user_reactivated"]
    assert "u3" in target.holding[("group", "g-app")].members  # type: ignore[union-attr]


async def test_failed_objects_are_retried_until_they_succeed(world) -> None:
    eng, source, target = world  # noqa: RUF059
    target.fail = {"u3"}
    report = await eng.cycle()
    assert report.targets["app"].failed == 1
    assert ("user", "u3") not in target.holding
    dirty, failed = await eng.store.counts("app")
    assert (dirty, failed) == (1, 1)
    target.fail = set()
    import anyio

    await anyio.sleep(0.06)  # past retry_max
    await eng.cycle()
    assert ("user", "u3") in target.holding
    assert await eng.store.counts("app") == (0, 0)


async def test_a_failing_plugin_does_not_stop_the_others(tmp_path: Path) -> None:
    source = FedSource(org())
    broken, healthy = RecordingTarget("broken"), RecordingTarget("healthy")
    broken.raise_error = True
    eng = await engine(tmp_path, source, [slot(broken, [BOUND]), slot(healthy, [BOUND])])
    report = await eng.cycle()
    assert report.targets["broken"].failed == 6
    assert report.targets["healthy"].delivered == 6
    assert len(healthy.holding) == 6
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_an_unreadable_source_fails_the_cycle_and_changes_nothing(world) -> None:
    eng, source, target = world
    await eng.cycle()
    source.error = "file directory.yaml: not valid YAML at line 3"
    calls = len(target.calls)
    source.set(Snapshot.of([], []))
    report = await eng.cycle()
    assert report.result == "failed"
    assert "line 3" in (report.error or "")
    assert len(target.calls) == calls


async def test_the_guard_holds_mass_removals_until_approved(tmp_path: Path) -> None:
    source = FedSource(org(40))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND])])
    await eng.cycle()
    assert len([k for k in target.holding if k[0] == "user"]) == 40

    # The directory comes back empty: every removal is held, nothing is sent.
    source.set(Snapshot.of([], []))
    target.calls.clear()
    report = await eng.cycle()
    # 40 users and the bound group, which the directory deleted.
    assert report.targets["app"].held == 41
    assert [c for c in target.changes() if c.startswith("user")] == []
    assert "group_removed" not in target.changes()
    hold = await eng.store.hold("app")
    assert hold is not None and len(hold.keys) == 41
    assert ("group", "g-app") in hold.keys
    # A quiet cycle keeps holding.
    await eng.cycle()
    assert len([k for k in target.holding if k[0] == "user"]) == 40
    assert len(target.holding[("group", "g-app")].members) == 40  # type: ignore[union-attr]

    assert await eng.store.approve("app") == 41
    await eng.cycle()
    assert [k for k in target.holding if k[0] == "user"] == []
    assert ("group", "g-app") not in target.holding
    assert await eng.store.hold("app") is None
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_the_guard_holds_groups_emptied_with_the_users(tmp_path: Path) -> None:
    source = FedSource(org(40))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND])])
    await eng.cycle()
    members = target.holding[("group", "g-app")].members  # type: ignore[union-attr]
    assert len(members) == 40

    # The groups come back empty while the users are still there: every user
    # leaves the target's scope, and the bound group would lose every member.
    source.set(org(40, bound=[]))
    target.calls.clear()
    report = await eng.cycle()
    assert "members_removed" not in target.changes()
    assert "user_suspended" not in target.changes()
    assert target.holding[("group", "g-app")].members == members  # type: ignore[union-attr]
    hold = await eng.store.hold("app")
    assert hold is not None and ("group", "g-app") in hold.keys
    assert report.targets["app"].held == 41
    # The held group row keeps its recorded state, like the held users.
    assert await eng.store.counts("app") == (0, 0)
    planned = {p.delta.object_id: p.status for p in await eng.preview()}
    assert planned["g-app"] == "held"

    assert await eng.store.approve("app") == 41
    target.calls.clear()
    await eng.cycle()
    assert target.holding[("group", "g-app")].members == ()  # type: ignore[union-attr]
    assert target.changes().count("user_suspended") == 40
    assert await eng.store.hold("app") is None
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_the_guard_holds_a_membership_wipe_that_deactivates_nobody(tmp_path: Path) -> None:
    # Everyone is in two bound groups; one of them comes back empty. Nobody
    # leaves the target, but 40 of its 80 memberships would go.
    users = [user(f"u{i}") for i in range(40)]
    ids = [u.id for u in users]
    both = [make_group("g-app", BOUND, ids), make_group("g-team", "Team", ids)]
    source = FedSource(Snapshot.of(users, both))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND, "Team"])])
    await eng.cycle()
    source.set(Snapshot.of(users, [both[0], make_group("g-team", "Team", [])]))
    target.calls.clear()
    report = await eng.cycle()
    assert report.targets["app"].held == 1
    assert target.changes() == []
    assert len(target.holding[("group", "g-team")].members) == 40  # type: ignore[union-attr]

    # A later directory change re-plans; it goes through, the wipe stays held.
    retitled = [msgspec.structs.replace(users[0], title="CTO"), *users[1:]]
    source.set(Snapshot.of(retitled, [both[0], make_group("g-team", "Team", [])]))
    await eng.cycle()
    assert target.changes() == ["user_changed"]
    assert len(target.holding[("group", "g-team")].members) == 40  # type: ignore[union-attr]
    target.calls.clear()

    assert await eng.store.approve("app") == 1
    await eng.cycle()
    assert target.changes() == ["members_removed"]
    assert target.holding[("group", "g-team")].members == ()  # type: ignore[union-attr]
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_the_guard_lets_small_membership_removals_through(tmp_path: Path) -> None:
    users = [user(f"u{i}") for i in range(40)]
    ids = [u.id for u in users]
    both = [make_group("g-app", BOUND, ids), make_group("g-team", "Team", ids)]
    source = FedSource(Snapshot.of(users, both))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND, "Team"], share=0.5)])
    await eng.cycle()
    source.set(Snapshot.of(users, [both[0], make_group("g-team", "Team", ids[:10])]))
    target.calls.clear()
    report = await eng.cycle()  # 30 of 80 memberships: past min_count, under the share
    assert report.targets["app"].held == 0
    assert target.changes() == ["members_removed"]
    assert len(target.holding[("group", "g-team")].members) == 10  # type: ignore[union-attr]
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_the_guard_lets_small_removals_through(tmp_path: Path) -> None:
    source = FedSource(org(40))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND])])
    await eng.cycle()
    source.set(org(40, bound=[f"u{i}" for i in range(37)]))  # 3 of 40 leave
    report = await eng.cycle()
    assert report.targets["app"].held == 0
    assert target.changes().count("user_suspended") == 3
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_unbinding_a_group_leaves_it_alone_and_deactivates_its_members(
    tmp_path: Path,
) -> None:
    source = FedSource(org())
    target = RecordingTarget()
    s = slot(target, [BOUND, "Engineering"])
    eng = await engine(tmp_path, source, [s])
    await eng.cycle()
    assert ("group", "g-eng") in target.holding
    # Unbind both groups: the groups are released (no delivery), users deactivated.
    s.settings.groups = []
    eng.force_plan = True
    target.calls.clear()
    await eng.cycle()
    assert "group_removed" not in target.changes()
    assert target.changes().count("user_suspended") == 5
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_preview_shows_pending_changes_without_writing(world) -> None:
    eng, source, target = world  # noqa: RUF059
    planned = await eng.preview()
    assert {p.delta.object_id for p in planned} == {"u0", "u1", "u2", "u3", "u4", "g-app"}
    assert target.calls == []
    report = await eng.cycle()
    assert report.targets["app"].delivered == 6


async def test_directory_answers_sign_in_questions_from_committed_state(world) -> None:
    from daemon.directory import Directory

    eng, source, target = world  # noqa: RUF059
    await eng.cycle()
    directory = Directory(eng.store, source)
    user = await directory.find_user("U1@X.example")
    assert user is not None and user.id == "u1"
    assert await directory.granted("app", user)
    outsider = await directory.find_user("nobody")
    assert outsider is None
    # u2 leaves the bound group: refused from the next cycle on.
    source.set(org(bound=["u0", "u1", "u3", "u4"]))
    await eng.cycle()
    u2 = await directory.find_user("u2")
    assert u2 is not None and not await directory.granted("app", u2)
    # No plugin claims the fed source: never authenticated.
    assert await directory.authenticate("u1", "whatever-password") is None
    assert await directory.authenticate("u1", "") is None


async def test_targets_hear_which_objects_were_released(tmp_path: Path) -> None:
    released: list[tuple[str, list[tuple[str, str]]]] = []

    class Releasing(RecordingTarget):
        def release(self, keys):  # type: ignore[no-untyped-def]
            released.append((self.name, list(keys)))

    source = FedSource(org())
    target = Releasing()
    s = slot(target, [BOUND, "Engineering"])
    eng = await engine(tmp_path, source, [s])
    await eng.cycle()
    s.settings.groups = [BOUND]
    eng.force_plan = True
    await eng.cycle()
    assert released == [("app", [("group", "g-eng")])]
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_a_target_is_started_once_though_delivery_and_periodic_work_race(
    tmp_path: Path,
) -> None:
    class Slow(RecordingTarget):
        starts = 0

        async def start(self, store: object) -> None:
            Slow.starts += 1
            await anyio.sleep(0.05)  # the other caller arrives meanwhile

        async def periodic(self) -> None:
            return None

    target = Slow()
    s = slot(target, [BOUND])
    eng = await engine(tmp_path, FedSource(org()), [s])
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.periodic, s)
        tg.start_soon(eng.cycle)
    assert Slow.starts == 1
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_a_target_that_cannot_start_stops_no_other_target(tmp_path: Path) -> None:
    class Broken(RecordingTarget):
        async def start(self, store: object) -> None:
            raise OSError("the state could not be read")

    broken, fine = Broken("broken"), RecordingTarget("fine")
    eng = await engine(tmp_path, FedSource(org()), [slot(broken, [BOUND]), slot(fine, [BOUND])])
    report = await eng.cycle()
    assert fine.holding and not broken.calls
    assert "could not start" in (report.targets["broken"].error or "")
    assert report.targets["fine"].delivered > 0
    await eng.store.aclose()  # type: ignore[attr-defined]
