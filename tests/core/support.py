"""Test doubles of provisiond's own interfaces (a source fed by the test, a target that records)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from daemon.config import EngineSettings, GuardSettings, TargetSettings
from daemon.engine import Engine, TargetSlot
from daemon.model import DirectoryObject, Snapshot, User, content_hash, make_group
from daemon.plugins import plugin_manager
from daemon.sources.base import SourceError
from daemon.store.sqlite import SqliteStore
from daemon.targets.base import Delta, Outcome


class FedSource:
    """A source whose next snapshot the test sets (``error`` makes fetch fail)."""

    kind = "fed"
    incremental = False

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.error: str | None = None
        self.fetches = 0

    def set(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        self.fetches += 1
        if self.error:
            raise SourceError(self.error)
        version = "v:" + content_hash(
            make_group("x", str(sorted(self.snapshot.hashes().items())), [])
        )
        if version == known_version:
            return None
        return Snapshot(dict(self.snapshot.users), dict(self.snapshot.groups), version)

    async def check(self) -> list[str]:
        return ["fed"]

    async def aclose(self) -> None:
        return None


class RecordingTarget:
    """Holds what it was sent, like an application would; can be told to fail."""

    kind = "recording"

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.holding: dict[tuple[str, str], DirectoryObject] = {}
        self.calls: list[list[Delta]] = []
        self.fail: set[str] = set()  # object ids that fail
        self.raise_error = False

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        self.calls.append(list(deltas))
        if self.raise_error:
            raise RuntimeError("boom")
        out = []
        for d in deltas:
            if d.object_id in self.fail:
                out.append(Outcome.failure(d, "refused by the test"))
                continue
            if d.desired is None:
                self.holding.pop(d.key, None)
            else:
                self.holding[d.key] = d.desired
            out.append(Outcome.success(d, remote_id=f"r-{d.object_id}"))
        return out

    async def check(self, write_test: bool = False) -> list[str]:
        return ["recording"]

    async def aclose(self) -> None:
        return None

    def changes(self) -> list[str]:
        return [c.name for call in self.calls for d in call for c in d.changes]


def user(uid: str, **kw: object) -> User:
    fields: dict[str, object] = {"id": uid, "username": uid, "email": f"{uid}@x.example"}
    fields.update(kw)
    return User(**fields)  # type: ignore[arg-type]


def slot(
    target: RecordingTarget, groups: list[str], min_count: int = 25, share: float = 0.1
) -> TargetSlot:
    settings = TargetSettings(
        name=target.name,
        kind="recording",
        groups=groups,
        guard=GuardSettings(max_share=share, min_count=min_count),
    )
    return TargetSlot(settings, target)


async def engine(
    tmp_path: Path, source: FedSource, slots: list[TargetSlot], **engine_kw: object
) -> Engine:
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    settings = EngineSettings(**engine_kw)  # type: ignore[arg-type]
    return Engine(source, slots, store, plugin_manager(entry_points=False), settings)


#: The bound group of :func:`org`.
BOUND = "App Users"


def org(n: int) -> Snapshot:
    """``n`` users, all in the one bound group."""
    users = [user(f"u{i}") for i in range(n)]
    return Snapshot.of(users, [make_group("g-app", BOUND, [u.id for u in users])])
