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
