"""Proportional cycles: a snapshot that names what changed (``base``/``changed``) gives
exactly what the full compare gives, on random directories under random changes."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from daemon.engine import Engine
from daemon.model import AccountState, Group, ObjectKind, Snapshot, User, make_group
from daemon.screening import duplicate_logins
from daemon.store import Key

from .support import FedSource, RecordingTarget, engine, slot

BOUND = ["Bound A", "Bound B"]


class ChangedSource(FedSource):
    """A :class:`FedSource` that also says what changed since the snapshot it last returned."""

    kind = "changed"

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__(snapshot)
        self.last: Snapshot | None = None

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        out = await super().fetch(known_version)
        if out is None:
            return None
        prev = self.last
        if prev is not None:
            out.base = prev.version
            out.changed = frozenset(changed_keys(prev, out))
        self.last = out
        return out


def changed_keys(a: Snapshot, b: Snapshot) -> set[Key]:
    keys: set[Key] = set()
    kinds: tuple[tuple[ObjectKind, dict[str, User] | dict[str, Group], object], ...] = (
        ("user", a.users, b.users),
        ("group", a.groups, b.groups),
    )
    for kind, old, new in kinds:
        assert isinstance(new, dict)
        for oid in old.keys() | new.keys():
            if old.get(oid) != new.get(oid):
                keys.add((kind, oid))
    return keys


def random_user(rng: random.Random, uid: str) -> User:
    name = rng.choice(["ana", "bo", "cy", "dee", "émile", "zoë"]) + str(rng.randrange(300))
    return User(
        id=uid,
        username=name,
        email=f"{name}@x.example",
        title=rng.choice([None, "Dev", "Ops"]),
        state=rng.choice([AccountState.ACTIVE] * 4 + [AccountState.SUSPENDED]),
    )


def random_directory(rng: random.Random, n: int) -> Snapshot:
    users: list[User] = []
    while len(users) < n:  # no shared login to start with (mutate makes some)
        candidate = random_user(rng, f"u{len(users)}")
        if all(u.username != candidate.username for u in users):
            users.append(candidate)
    names = [*BOUND, "Other", "Team X", "Team Y"]
    groups = [
        make_group(f"g{i}", name, [u.id for u in users if rng.random() < 0.4])
        for i, name in enumerate(names)
    ]
    return Snapshot.of(users, groups)


def mutate(rng: random.Random, snap: Snapshot, serial: list[int]) -> Snapshot:
    users = dict(snap.users)
    groups = dict(snap.groups)
    if rng.random() < 0.5:  # shared logins get fixed, sooner or later
        for _, ids in duplicate_logins(users.values()):
            for uid in ids[1:]:
                fixed = f"fixed-{uid}"
                users[uid] = msgspec.structs.replace(
                    users[uid], username=fixed, email=f"{fixed}@x.example"
                )
    for _ in range(rng.randint(1, 4)):
        what = rng.randrange(9)
        if what == 0 and users:  # a field changes; now and then a login another user has
            uid = rng.choice(sorted(users))
            users[uid] = msgspec.structs.replace(users[uid], title=rng.choice(["A", "B", None]))
            if rng.random() < 0.15:
                other = users[rng.choice(sorted(users))]
                name = other.username.upper() if rng.random() < 0.5 else other.username
                users[uid] = msgspec.structs.replace(users[uid], username=name)
        elif what == 1 and users:  # suspended or reactivated
            uid = rng.choice(sorted(users))
            state = rng.choice([AccountState.ACTIVE, AccountState.SUSPENDED])
            users[uid] = msgspec.structs.replace(users[uid], state=state)
        elif what == 2 and users:  # removed from the directory (and its groups)
            uid = rng.choice(sorted(users))
            del users[uid]
            for gid, g in list(groups.items()):
                groups[gid] = make_group(gid, g.name, [m for m in g.members if m != uid])
        elif what == 3:  # a new user, maybe in a group
            serial[0] += 1
            uid = f"n{serial[0]}"
            users[uid] = random_user(rng, uid)
            if groups and rng.random() < 0.7:
                gid = rng.choice(sorted(groups))
                groups[gid] = make_group(gid, groups[gid].name, [*groups[gid].members, uid])
        elif what in (4, 5) and groups and users:  # joins or leaves a group
            gid = rng.choice(sorted(groups))
            uid = rng.choice(sorted(users))
            members = set(groups[gid].members) ^ {uid}
            groups[gid] = make_group(gid, groups[gid].name, members)
        elif what == 6 and groups:  # renamed, maybe into or out of a bound name
            gid = rng.choice(sorted(groups))
            taken = {g.name for g in groups.values()}
            free = [n for n in [*BOUND, "Renamed", "Else"] if n not in taken]
            if free:
                groups[gid] = make_group(gid, rng.choice(free), groups[gid].members)
        elif what == 7 and groups:  # a group deleted
            del groups[rng.choice(sorted(groups))]
        elif what == 8:  # a new group
            serial[0] += 1
            gid = f"gn{serial[0]}"
            taken = {g.name for g in groups.values()}
            free = [n for n in [*BOUND, f"New {gid}"] if n not in taken]
            members = [u for u in users if rng.random() < 0.3]
            groups[gid] = make_group(gid, rng.choice(free), members)
    return Snapshot(users, groups)


async def state(eng: Engine, target: RecordingTarget) -> tuple[object, ...]:
    committed = await eng.store.committed()
    index = await eng.store.target_index(target.name)
    rows = await eng.store.rows(target.name, list(index.hashes))
    desired = {k: (r.desired_hash, r.desired, r.written) for k, r in rows.items()}
    return committed.hashes, index.hashes, sorted(index.active), desired, target.holding


@pytest.mark.parametrize("seed", range(30))
async def test_a_proportional_cycle_equals_a_full_one(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    snap = random_directory(rng, rng.randint(5, 25))
    full_source, fast_source = FedSource(snap), ChangedSource(snap)
    full_target, fast_target = RecordingTarget(), RecordingTarget()
    (tmp_path / "full").mkdir()
    (tmp_path / "fast").mkdir()
    # min_count 1000: the guard never holds (it is the same code on both paths).
    full = await engine(tmp_path / "full", full_source, [slot(full_target, BOUND, 1000)])
    fast = await engine(tmp_path / "fast", fast_source, [slot(fast_target, BOUND, 1000)])
    proportional = 0
    compare_changed = fast._compare_changed

    async def counted(*args: object) -> object:
        nonlocal proportional
        proportional += 1
        return await compare_changed(*args)  # type: ignore[arg-type]

    fast._compare_changed = counted  # type: ignore[method-assign]
    try:
        serial = [0]
        for step in range(12):
            full_report, fast_report = await full.cycle(), await fast.cycle()
            assert fast_report.changes == full_report.changes, (seed, step)
            assert {n: t.planned for n, t in fast_report.targets.items()} == {
                n: t.planned for n, t in full_report.targets.items()
            }, (seed, step)
            assert await state(fast, fast_target) == await state(full, full_target), (seed, step)
            snap = mutate(rng, snap, serial)
            full_source.set(snap)
            fast_source.set(snap)
        assert proportional > 0  # the fast path ran (collisions send some cycles the full way)
    finally:
        await full.store.aclose()  # type: ignore[attr-defined]
        await fast.store.aclose()  # type: ignore[attr-defined]
