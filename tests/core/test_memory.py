"""Large cycles hand the memory they freed back to the system (glibc's malloc_trim)."""

from __future__ import annotations

import platform
from pathlib import Path

import msgspec
import pytest

from daemon import engine as engine_module
from daemon.memory import release_free_memory
from daemon.model import Snapshot, make_group

from .support import FedSource, RecordingTarget, engine, slot, user


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    blocks = [bytes(4096 + i % 7) for i in range(20_000)]  # from the C heap, not pymalloc
    del blocks
    assert release_free_memory() is True


async def test_the_engine_trims_after_a_whole_snapshot_or_many_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(engine_module, "release_free_memory", lambda: trims.append(1) or True)
    monkeypatch.setattr(engine_module, "LARGE_CHANGE", 3)
    users = [user(f"u{i}") for i in range(5)]
    source = FedSource(Snapshot.of(users, [make_group("g", "G", [u.id for u in users])]))
    eng = await engine(tmp_path, source, [slot(RecordingTarget(), ["G"])])
    try:
        await eng.cycle()  # the first sync compares the whole snapshot
        assert trims == [1]
        assert (await eng.cycle()).result == "quiet"  # nothing read: nothing to give back
        assert trims == [1]
        snapshot = Snapshot.of(users, source.snapshot.groups.values())
        snapshot.users["u1"] = msgspec.structs.replace(users[1], title="CTO")
        source.set(snapshot)
        assert (await eng.cycle()).result == "ok"  # a full read again: FedSource says no base
        assert trims == [1, 1]
    finally:
        await eng.store.aclose()  # type: ignore[attr-defined]


class Proportional(FedSource):
    """Says what changed since the snapshot it handed out before (as syncrepl does)."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__(snapshot)
        self.last: Snapshot | None = None

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        out = await super().fetch(known_version)
        if out is not None and self.last is not None:
            out.base = self.last.version
            out.changed = frozenset(
                ("user", uid)
                for uid in out.users.keys() | self.last.users.keys()
                if out.users.get(uid) != self.last.users.get(uid)
            )
        self.last = out or self.last
        return out


async def test_a_proportional_cycle_trims_only_after_many_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(engine_module, "release_free_memory", lambda: trims.append(1) or True)
    monkeypatch.setattr(engine_module, "LARGE_CHANGE", 3)
    users = [user(f"u{i}") for i in range(5)]
    groups = [make_group("g", "G", [u.id for u in users])]
    source = Proportional(Snapshot.of(users, groups))
    eng = await engine(tmp_path, source, [slot(RecordingTarget(), ["G"])])
    try:
        await eng.cycle()
        assert trims == [1]
        for changed, expected in ((1, [1]), (3, [1, 1])):
            snapshot = Snapshot.of(users, groups)
            for i in range(changed):
                snapshot.users[f"u{i}"] = msgspec.structs.replace(users[i], title=f"T{changed}")
            source.set(snapshot)
            report = await eng.cycle()
            assert report.changes == {"user_changed": changed}
            assert trims == expected, changed
    finally:
        await eng.store.aclose()  # type: ignore[attr-defined]
