"""Change notices: the engine coalesces and debounces them, the service runs the source's watch.

``tests/core/watching.py`` is the watching source the service runs here (a
stand-in for syncrepl or the file watch: the service side is under test).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import yaml

from daemon import metrics
from daemon.engine import Pending
from daemon.service import Service
from daemon.sources import metrics as source_metrics
from daemon.sources.base import ChangeNotice

from . import watching
from .support import FedSource, RecordingTarget, engine, org, slot


def notice(
    users: tuple[str, ...] = (), groups: tuple[str, ...] = (), at: float = 1.0
) -> ChangeNotice:
    return ChangeNotice(at, frozenset(users), frozenset(groups))


def test_pending_merges_ids_and_takes_them_once() -> None:
    pending = Pending(max_keys=10)
    pending.add(notice(("u1",), at=5.0), now=0.0)
    pending.add(notice(("u1", "u2"), ("g1",), at=3.0), now=0.1)
    taken, seen = pending.take()
    assert taken == ChangeNotice(3.0, frozenset({"u1", "u2"}), frozenset({"g1"}))
    assert sorted(seen) == [3.0, 5.0]
    assert pending.take() == (None, [])


def test_pending_without_ids_is_everything() -> None:
    pending = Pending(max_keys=10)
    pending.add(notice(("u1",)), now=0.0)
    pending.add(ChangeNotice(2.0), now=0.0)
    pending.add(notice(("u2",)), now=0.0)
    taken, _ = pending.take()
    assert taken is not None and taken.everything


def test_a_flood_of_notices_keeps_bounded_memory_and_collapses_to_everything() -> None:
    pending = Pending(max_keys=100)
    for i in range(10_000):
        pending.add(notice((f"u{i}",), at=1000.0 + i), now=float(i))
        assert pending.keys <= 100
        assert len(pending.seen) <= 100
    assert pending.everything and len(pending) == 10_000
    taken, seen = pending.take()
    assert taken is not None and taken.everything
    assert taken.seen_at == 1000.0  # the oldest notice is kept for the lag
    assert len(seen) == 100


def lag_count(source: str) -> float:
    for family in metrics.CHANGE_LAG.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("source") == source:
                return sample.value
    return 0.0


async def test_a_burst_of_10000_notices_is_one_cycle(tmp_path: Path) -> None:
    source = FedSource(org(3))
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, ["App Users"])], debounce=0.05)
    try:
        await eng.cycle()
        cycles = 0
        lags = lag_count("fed")

        async def cycles_on_notice() -> None:
            nonlocal cycles
            while True:
                await eng.settled()
                await eng.cycle()
                cycles += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(cycles_on_notice)
            for i in range(10_000):
                eng.announce(notice((f"u{i}",), at=time.time()))
                if i % 1000 == 0:
                    await anyio.lowlevel.checkpoint()  # over a few event-loop turns
            await wait_for(lambda: cycles > 0)
            await anyio.sleep(0.3)  # nothing more is pending: no further cycle
            tg.cancel_scope.cancel()
        assert cycles == 1
        assert len(eng.pending) == 0
        assert lag_count("fed") - lags == 10_000  # one lag per notice (bounded: max keys)
    finally:
        await eng.store.aclose()  # type: ignore[attr-defined]


async def test_settled_waits_for_the_debounce_window(tmp_path: Path) -> None:
    source = FedSource(org(3))
    eng = await engine(tmp_path, source, [], debounce=0.2)
    try:
        eng.announce(notice(("u1",)))
        started = time.monotonic()
        await anyio.sleep(0.1)
        eng.announce(notice(("u2",)))  # the window starts again, up to 4x debounce
        with anyio.fail_after(2):
            await eng.settled()
        waited = time.monotonic() - started
        assert 0.28 <= waited < 0.8
    finally:
        await eng.store.aclose()  # type: ignore[attr-defined]


async def test_a_failed_cycle_keeps_its_notices_for_the_next(tmp_path: Path) -> None:
    source = FedSource(org(3))
    eng = await engine(tmp_path, source, [], debounce=0.0)
    try:
        eng.announce(notice(("u1",)))
        source.error = "the test fails the read"
        report = await eng.cycle()
        assert report.result == "failed"
        assert len(eng.pending) == 1
        source.error = None
        await eng.cycle()
        assert len(eng.pending) == 0
    finally:
        await eng.store.aclose()  # type: ignore[attr-defined]


# -- the service runs the watch ----------------------------------------------------------


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path, fail_next: int = 0) -> AsyncIterator[Service]:
    watching.CONTROL = watching.Control(fail_next=fail_next)
    config = tmp_path / "provisiond.yaml"
    (tmp_path / "journal").mkdir()
    config.write_text(
        yaml.safe_dump(
            {
                "plugins": ["tests.core.watching"],
                "source": {"kind": "watched", "options": {}},
                "targets": [
                    {
                        "name": "app",
                        "kind": "log",
                        "groups": ["App Users"],
                        "options": {"journal": "journal/app.jsonl"},
                    }
                ],
                # The poll is far away: only a notice can run a cycle in time.
                "engine": {"interval": 3600, "jitter": 0, "debounce": 0.05},
                "state": {"path": "state/provisiond.db"},
                "http": {"ops": {"host": "127.0.0.1", "port": 0}},
                "logging": {"level": "warning", "format": "json"},
            }
        )
    )
    svc = Service(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(svc.run)
        yield svc
        await svc.stop("test over")
        tg.cancel_scope.cancel()


async def wait_for(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Until ``condition()`` holds; fails after ``seconds``."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polls state the code under test sets
            await anyio.sleep(0.01)


async def test_a_notice_runs_a_cycle_long_before_the_poll(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        await _notice_runs_a_cycle(service)


async def _notice_runs_a_cycle(service: Service) -> None:
    await wait_for(lambda: watching.CONTROL.running.is_set() and service.engine is not None)
    await wait_for(lambda: service.engine.last_report is not None)  # type: ignore[union-attr]
    first = service.engine.last_report  # type: ignore[union-attr]
    watching.CONTROL.users = 4
    watching.announce_users("u3")
    await wait_for(lambda: service.engine.last_report is not first, seconds=2)  # type: ignore[union-attr]
    report = service.engine.last_report  # type: ignore[union-attr]
    assert report is not None and report.changes.get("user_added") == 1
    watch = service.status()["source_watch"]
    assert watch["running"] and watch["connected"] and watch["source"] == "watched"


async def test_a_failing_watch_starts_again_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first two starts fail; the third runs. Backoff 0.1 s, then 0.2 s (times 0.5 to 1).
    monkeypatch.setattr("daemon.service.WATCH_BACKOFF", (0.1, 1.0))
    async with running_service(tmp_path, fail_next=2) as service:
        await _fails_then_runs(service)


async def _fails_then_runs(service: Service) -> None:
    reconnects = source_metrics.WATCH_RECONNECTS.labels("watched")._value.get()
    started = time.monotonic()
    await wait_for(lambda: watching.CONTROL.running.is_set())
    assert watching.CONTROL.starts == 3
    assert source_metrics.WATCH_RECONNECTS.labels("watched")._value.get() - reconnects == 2
    assert time.monotonic() - started < 2.0  # 0.1 s, then 0.2 s (times 0.5 to 1)
    watch = service.status()["source_watch"]
    assert watch["reconnects"] >= 2 and watch["connected"]
    # Once it runs, a notice still gets its cycle.
    await wait_for(lambda: service.engine.last_report is not None)  # type: ignore[union-attr]
    first = service.engine.last_report  # type: ignore[union-attr]
    watching.CONTROL.users = 5
    watching.announce_users("u3", "u4")
    await wait_for(lambda: service.engine.last_report is not first, seconds=2)  # type: ignore[union-attr]


async def test_the_watch_runs_only_on_the_source_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leads = False
    monkeypatch.setattr(Service, "_leads_source", lambda self: leads)
    monkeypatch.setattr("daemon.service.WATCH_LOOK_EVERY", 0.02)
    async with running_service(tmp_path) as service:
        await wait_for(lambda: service.engine is not None and service.engine.last_report)
        await anyio.sleep(0.2)
        assert watching.CONTROL.starts == 0
        assert service.status()["source_watch"]["running"] is False
        leads = True  # the lease was won
        await wait_for(lambda: watching.CONTROL.running.is_set())
        assert service.status()["source_watch"]["running"] is True
        leads = False  # and lost: the watch stops
        await wait_for(lambda: service.status()["source_watch"]["running"] is False)
        assert watching.CONTROL.starts == 1
