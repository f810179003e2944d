"""What only the SQLite backend promises: its file, its pragmas, one transaction per migration."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from daemon.store import StateError
from daemon.store import sqlite as sqlite_store
from daemon.store.sqlite import MIGRATIONS, SqliteStore


async def settled(threads: int) -> None:
    """Wait (a little) for the thread count to come back to ``threads``."""
    for _ in range(200):
        if threading.active_count() <= threads:
            break
        await anyio.sleep(0.01)
    assert threading.active_count() <= threads


async def test_a_file_that_is_no_database_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite database, just some text " * 100)
    threads = threading.active_count()
    with pytest.raises(StateError, match=f"cannot open state database {path}"):
        await SqliteStore(path).open()
    await settled(threads)


async def test_a_refused_store_leaves_no_connection_behind(tmp_path: Path) -> None:
    # An open connection is a live thread: the process could not exit.
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    await store.open()
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    threads = threading.active_count()
    with pytest.raises(StateError):
        await store.open()
    with pytest.raises(StateError, match="not open"):
        await store.committed()
    await settled(threads)


async def test_durable_settings(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        async with store.db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"
        async with store.db.execute("PRAGMA synchronous") as cur:
            assert (await cur.fetchone())[0] == 2  # FULL
        async with store.db.execute("PRAGMA busy_timeout") as cur:
            assert (await cur.fetchone())[0] >= 1000
    finally:
        await store.aclose()


async def test_a_failing_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    await store.open()
    await store.set_meta("marker", "kept")
    await store.aclose()
    broken = (
        "CREATE TABLE half_done (x TEXT); INSERT INTO meta VALUES ('x', 'y'); "
        "SELECT nope FROM nowhere"
    )
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StateError, match=f"cannot open state database {path}.*nowhere"):
        await SqliteStore(path).open()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "half_done" not in tables
        assert db.execute("SELECT value FROM meta WHERE key = 'x'").fetchone() is None
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", MIGRATIONS)
    again = SqliteStore(path)
    await again.open()
    assert await again.get_meta("marker") == "kept"
    await again.aclose()
