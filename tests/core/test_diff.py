from __future__ import annotations

from hypothesis import given, settings

from daemon.changes import (
    CHANGE_KINDS,
    GroupAdded,
    GroupRenamed,
    MembersAdded,
    UserChanged,
    UserReactivated,
    UserRemoved,
    UserSuspended,
)
from daemon.diff import apply, diff, diff_user
from daemon.model import AccountState, Snapshot, User, make_group

from .strategies import snapshots


@settings(max_examples=300)
@given(snapshots(), snapshots())
def test_applying_the_diff_turns_a_into_b(a: Snapshot, b: Snapshot) -> None:
    assert apply(a, diff(a, b)) == Snapshot(b.users, b.groups, a.version)


@given(snapshots())
def test_a_snapshot_has_no_diff_with_itself(a: Snapshot) -> None:
    assert diff(a, a) == []


@given(snapshots(), snapshots())
def test_changes_come_in_delivery_order(a: Snapshot, b: Snapshot) -> None:
    order = [CHANGE_KINDS.index(c.name) for c in diff(a, b)]
    phases = [0 if i < 4 else 1 if i < 6 else 2 if i < 8 else 3 if i < 9 else 4 for i in order]
    assert phases == sorted(phases)


def _user(**kw: object) -> User:
    base: dict[str, object] = {"id": "u1", "username": "ann", "email": "ann@x.example"}
    base.update(kw)
    return User(**base)  # type: ignore[arg-type]


def test_a_field_change_names_the_fields() -> None:
    (change,) = diff_user(_user(title="A"), _user(title="B"))
    assert isinstance(change, UserChanged)
    assert change.fields == ("title",)


def test_state_changes_are_typed() -> None:
    suspended = _user(state=AccountState.SUSPENDED)
    assert [type(c) for c in diff_user(_user(), suspended)] == [UserSuspended]
    assert [type(c) for c in diff_user(suspended, _user())] == [UserReactivated]
    both = diff_user(_user(), _user(title="X", state=AccountState.SUSPENDED))
    assert [type(c) for c in both] == [UserChanged, UserSuspended]


def test_removals_come_last_and_groups_after_users() -> None:
    a = Snapshot.of([_user(), _user(id="u2", username="bo", email="bo@x.example")])
    b = Snapshot.of(
        [_user(id="u3", username="cy", email="cy@x.example")],
        [make_group("g1", "Eng", ["u3"])],
    )
    kinds = [type(c) for c in diff(a, b)]
    assert kinds[0].__name__ == "UserAdded"
    assert kinds[1] is GroupAdded
    assert kinds[-2:] == [UserRemoved, UserRemoved]


def test_group_rename_and_members() -> None:
    a = Snapshot.of([], [make_group("g1", "Eng", ["u1"])])
    b = Snapshot.of([], [make_group("g1", "Engineering", ["u1", "u2"])])
    assert diff(a, b) == [GroupRenamed("g1", "Eng", "Engineering"), MembersAdded("g1", ("u2",))]
