"""The periodic purge of the provisioning log: past the retention, in bounded batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon import service
from daemon.config import StateSettings
from daemon.store import LogEntry
from daemon.store.sqlite import SqliteStore


class CountingStore(SqliteStore):
    """Counts the purge statements (each a bounded batch)."""

    batches: list[int]

    async def purge_log(self, before: float, limit: int) -> int:
        n = await super().purge_log(before, limit)
        self.batches.append(limit)
        return n


async def test_old_entries_go_in_batches_and_newer_ones_stay(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "state.db")
    store.batches = []
    await store.open()
    old = [LogEntry(float(i), "app", ("user", f"u{i}"), "planned") for i in range(2_500)]
    new = [LogEntry(10_000.0 + i, "app", ("user", "x"), "planned") for i in range(3)]
    await store.commit("v1", [], [], {}, log=old + new)
    assert await service.purge_log(store, 5_000.0) == 2_500
    assert store.batches == [1_000, 1_000, 1_000]
    assert [e.at for e in await store.log_entries()] == [10_002.0, 10_001.0, 10_000.0]
    await store.aclose()


async def test_one_run_deletes_at_most_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "LOG_PURGE_BATCH", 10)
    monkeypatch.setattr(service, "LOG_PURGE_BATCHES", 3)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    log = [LogEntry(1.0, "app", ("user", f"u{i}"), "planned") for i in range(50)]
    await store.commit("v1", [], [], {}, log=log)
    assert await service.purge_log(store, 5.0) == 30
    assert await service.purge_log(store, 5.0) == 20
    await store.aclose()


def test_the_retention_setting_refuses_bad_values() -> None:
    assert StateSettings().log_retention_days == 30
    assert StateSettings(log_retention_days=0).log_retention_days == 0  # no log at all
    for bad in (-1, "a month", 100_000):
        with pytest.raises(ValidationError, match="log_retention_days"):
            StateSettings(log_retention_days=bad)  # type: ignore[arg-type]
