"""What a SCIM target last wrote, held in memory and kept in the core's store.

A target only sees the objects of the current batch, but it needs more: the
remote id of every user (group members are sent as remote ids), the body
last written (the baseline of minimal PATCHes and of reconciliation), and
when a removed user was deactivated (the hard-delete grace period).
:class:`Links` loads all of it from the store once, and :meth:`Links.flush`
writes what changed in one store transaction at the end of each delivery. A
crash before that loses only updates the core has not recorded either, so
they are delivered again (and matched before anything is created).

Installations from before the single store kept this in a private SQLite
file per target; :meth:`Links.load` imports such a file once and leaves it
in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from daemon.store import Deactivation, Key, Link, LinkChanges, Store

log = structlog.get_logger("provisiond.target.scim")

#: Set in the target's meta once a legacy file was imported (its path).
LEGACY_IMPORTED = "legacy_mirror_imported"


class Links:
    """The target's links (see the module docstring); ``load`` before use."""

    def __init__(self, target: str, legacy_file: Path | None = None) -> None:
        self._store: Store | None = None
        self.target = target
        self.legacy_file = legacy_file
        self.objects: dict[tuple[str, str], Link] = {}
        self.doomed: dict[str, tuple[str, float]] = {}
        #: Remote user id -> directory id, for members found on the server.
        self.by_remote: dict[str, str] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._doomed_dirty: set[str] = set()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError(f"target {self.target}: its state was not loaded from the store")
        return self._store

    @property
    def loaded(self) -> bool:
        return self._store is not None

    async def load(self, store: Store) -> None:
        """Read everything from ``store`` (importing a legacy file once)."""
        self._store = store
        await self._import_legacy()
        state = await self.store.target_links(self.target)
        self.objects = {(kind, oid): link for (kind, oid), link in state.links.items()}
        self.doomed = {oid: (d.remote_id, d.at) for oid, d in state.deactivations.items()}
        self.by_remote = {
            link.remote_id: key[1]
            for key, link in self.objects.items()
            if key[0] == "user" and link.remote_id
        }
        self._dirty.clear()
        self._doomed_dirty.clear()

    def get(self, kind: str, object_id: str) -> Link | None:
        return self.objects.get((kind, object_id))

    def remote_id(self, kind: str, object_id: str) -> str | None:
        link = self.objects.get((kind, object_id))
        return link.remote_id if link else None

    def put(self, kind: str, object_id: str, remote_id: str | None, body: dict[str, Any]) -> None:
        old = self.objects.get((kind, object_id))
        if old is not None and old.remote_id and kind == "user":
            self.by_remote.pop(old.remote_id, None)
        self.objects[(kind, object_id)] = Link(remote_id, body)
        if kind == "user" and remote_id:
            self.by_remote[remote_id] = object_id
        self._dirty.add((kind, object_id))

    def drop(self, kind: str, object_id: str) -> None:
        old = self.objects.pop((kind, object_id), None)
        if old is not None and old.remote_id and kind == "user":
            self.by_remote.pop(old.remote_id, None)
        self._dirty.add((kind, object_id))

    def forget(self, keys: list[tuple[str, str]]) -> None:
        """Drop ``keys`` from memory only: the store already forgot them (released)."""
        for kind, object_id in keys:
            self.drop(kind, object_id)
            self._dirty.discard((kind, object_id))

    async def prune(self) -> list[tuple[str, str]]:
        """Forget the links the store no longer holds (and that were not changed since).

        Another replica's commit may have released objects from this target
        (leader election: the replica that plans is not always the one that
        delivers), and forgotten their links in the store; this replica then
        stops managing them too. Returns the keys forgotten.
        """
        stored = (await self.store.target_links(self.target)).links
        gone = [key for key in self.objects if key not in self._dirty and key not in stored]
        self.forget(gone)
        return gone

    def doom(self, object_id: str, remote_id: str, at: float) -> float:
        """Record a deactivation pending deletion; returns when it was first recorded."""
        if object_id not in self.doomed:
            self.doomed[object_id] = (remote_id, at)
            self._doomed_dirty.add(object_id)
        return self.doomed[object_id][1]

    def pardon(self, object_id: str) -> None:
        if self.doomed.pop(object_id, None) is not None:
            self._doomed_dirty.add(object_id)

    def changes(self) -> LinkChanges:
        links: dict[Key, Link | None] = {}
        for kind, object_id in self._dirty:
            key: Key = ("user" if kind == "user" else "group", object_id)
            links[key] = self.objects.get((kind, object_id))
        deactivations: dict[str, Deactivation | None] = {}
        for oid in self._doomed_dirty:
            doomed = self.doomed.get(oid)
            deactivations[oid] = None if doomed is None else Deactivation(*doomed)
        return LinkChanges(links, deactivations)

    async def flush(self) -> None:
        """Write what changed since the last flush, in one store transaction."""
        changes = self.changes()
        if not changes:
            return
        await self.store.save_links(self.target, changes)
        self._dirty.clear()
        self._doomed_dirty.clear()

    async def _import_legacy(self) -> None:
        path = self.legacy_file
        if path is None or not path.exists():
            return
        if await self.store.target_meta(self.target, LEGACY_IMPORTED) is not None:
            return
        changes = await read_legacy(path)
        changes.meta[LEGACY_IMPORTED] = str(path)
        await self.store.save_links(self.target, changes)
        log.warning(
            "imported the target's private state file into the state store; the file is no "
            "longer used and may be deleted",
            target=self.target,
            file=str(path),
            objects=len(changes.links),
            pending_deletions=len(changes.deactivations),
        )


async def read_legacy(path: Path) -> LinkChanges:
    """The links a private per-target SQLite file (provisiond 0.1) holds."""
    changes = LinkChanges()
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = {row[0] async for row in await db.execute("SELECT name FROM sqlite_master")}
        if "objects" in tables:
            async with db.execute("SELECT kind, object_id, remote_id, body FROM objects") as cur:
                async for kind, object_id, remote_id, body in cur:
                    try:
                        parsed = json.loads(body)
                    except ValueError:
                        continue
                    key: Key = ("user" if kind == "user" else "group", object_id)
                    changes.links[key] = Link(remote_id, parsed)
        if "doomed" in tables:
            sql = "SELECT object_id, remote_id, deactivated_at FROM doomed"
            async with db.execute(sql) as cur:
                async for object_id, remote_id, at in cur:
                    changes.deactivations[object_id] = Deactivation(remote_id, float(at))
    # 0.1 deactivated a user removed from the directory but kept the body it had
    # upserted last (active) while the deletion waited: reconciliation would have
    # reactivated it. The body written last is the deactivated one.
    for object_id in changes.deactivations:
        link = changes.links.get(("user", object_id))
        if link is not None and link.body.get("active") is not False:
            deactivated = {**link.body, "active": False}
            changes.links[("user", object_id)] = Link(link.remote_id, deactivated)
    return changes
