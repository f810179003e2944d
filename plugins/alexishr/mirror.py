"""What this target last wrote to AlexisHR, kept in the state directory.

The core's store knows what was delivered, but a target only sees the objects
of the current batch. The mirror gives the target what it needs beyond that:
the remote id of every user (group members are sent as remote ids), the body
last written (the baseline of minimal PATCHes and of reconciliation), and when
a removed user was deactivated (the hard-delete grace period).

It is written at the end of each delivery. A crash before that loses only
updates the core has not recorded either, so they are delivered again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    remote_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, object_id)
);
CREATE TABLE IF NOT EXISTS doomed (
    object_id TEXT PRIMARY KEY,
    remote_id TEXT NOT NULL,
    deactivated_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Written:
    """One object as last written: its remote id (``None``: deliberately not created)."""

    remote_id: str | None
    body: dict[str, Any]


class Mirror:
    """An in-memory copy of the table, flushed with :meth:`flush`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.objects: dict[tuple[str, str], Written] = {}
        for kind, object_id, remote_id, body in self._db.execute(
            "SELECT kind, object_id, remote_id, body FROM objects"
        ):
            with contextlib.suppress(ValueError):
                self.objects[(kind, object_id)] = Written(remote_id, json.loads(body))
        self.doomed: dict[str, tuple[str, float]] = {
            object_id: (remote_id, at)
            for object_id, remote_id, at in self._db.execute(
                "SELECT object_id, remote_id, deactivated_at FROM doomed"
            )
        }
        self._dirty: set[tuple[str, str]] = set()
        self._doomed_dirty: set[str] = set()
        #: Remote user id → directory id, for members found on the server.
        self.by_remote: dict[str, str] = {
            w.remote_id: key[1]
            for key, w in self.objects.items()
            if key[0] == "user" and w.remote_id
        }

    def get(self, kind: str, object_id: str) -> Written | None:
        return self.objects.get((kind, object_id))

    def remote_id(self, kind: str, object_id: str) -> str | None:
        written = self.objects.get((kind, object_id))
        return written.remote_id if written else None

    def put(self, kind: str, object_id: str, remote_id: str | None, body: dict[str, Any]) -> None:
        old = self.objects.get((kind, object_id))
        if old is not None and old.remote_id and kind == "user":
            self.by_remote.pop(old.remote_id, None)
        self.objects[(kind, object_id)] = Written(remote_id, body)
        if kind == "user" and remote_id:
            self.by_remote[remote_id] = object_id
        self._dirty.add((kind, object_id))

    def drop(self, kind: str, object_id: str) -> None:
        old = self.objects.pop((kind, object_id), None)
        if old is not None and old.remote_id and kind == "user":
            self.by_remote.pop(old.remote_id, None)
        self._dirty.add((kind, object_id))

    def doom(self, object_id: str, remote_id: str, at: float) -> float:
        """Record a deactivation pending deletion; returns when it was first recorded."""
        if object_id not in self.doomed:
            self.doomed[object_id] = (remote_id, at)
            self._doomed_dirty.add(object_id)
        return self.doomed[object_id][1]

    def pardon(self, object_id: str) -> None:
        if self.doomed.pop(object_id, None) is not None:
            self._doomed_dirty.add(object_id)

    def flush(self) -> None:
        """Write what changed since the last flush, in one transaction."""
        if not self._dirty and not self._doomed_dirty:
            return
        upserts = []
        deletes = []
        for kind, object_id in self._dirty:
            written = self.objects.get((kind, object_id))
            if written is None:
                deletes.append((kind, object_id))
            else:
                upserts.append((kind, object_id, written.remote_id, json.dumps(written.body)))
        doomed_up = [(oid, *self.doomed[oid]) for oid in self._doomed_dirty if oid in self.doomed]
        doomed_del = [(oid,) for oid in self._doomed_dirty if oid not in self.doomed]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO objects (kind, object_id, remote_id, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, object_id) DO UPDATE SET remote_id = excluded.remote_id, "
                "body = excluded.body",
                upserts,
            )
            self._db.executemany("DELETE FROM objects WHERE kind = ? AND object_id = ?", deletes)
            self._db.executemany(
                "INSERT OR REPLACE INTO doomed (object_id, remote_id, deactivated_at) "
                "VALUES (?, ?, ?)",
                doomed_up,
            )
            self._db.executemany("DELETE FROM doomed WHERE object_id = ?", doomed_del)
        self._dirty.clear()
        self._doomed_dirty.clear()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.flush()
        self._db.close()
