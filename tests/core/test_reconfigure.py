"""``Engine.reconfigure``: a reload swaps the source, targets and settings between cycles."""

from __future__ import annotations

from daemon.config import EngineSettings

from .support import BOUND, FedSource, RecordingTarget, org, slot


async def test_the_next_cycle_runs_the_new_source_and_targets(engines) -> None:
    old_source, old_target = FedSource(org(2)), RecordingTarget("app")
    eng = await engines(old_source, [slot(old_target, [BOUND])])
    await eng.cycle()
    assert (await eng.cycle()).result == "quiet"

    # Same directory, a new source object, the old target plus a new one.
    new_source, added = FedSource(org(2)), RecordingTarget("more")
    settings = EngineSettings(batch_size=1)
    eng.reconfigure(new_source, [slot(old_target, [BOUND]), slot(added, [BOUND])], settings)
    assert eng.settings is settings
    calls = len(old_target.calls)
    report = await eng.cycle()
    # The new source is read and every target planned again, though nothing changed.
    assert (old_source.fetches, new_source.fetches) == (2, 1)
    assert report.targets["more"].delivered == 3
    assert set(added.holding) == {("user", "u0"), ("user", "u1"), ("group", "g-app")}
    # batch_size=1: one object per delivery call.
    assert [len(c) for c in added.calls] == [1, 1, 1]
    assert len(old_target.calls) == calls
    assert (await eng.cycle()).result == "quiet"
