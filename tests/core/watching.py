"""A test plugin: a source fed by the test whose ``watch`` the test drives.

Loaded through the configuration's ``plugins`` list, like any plugin module.
The test holds :data:`CONTROL` and tells the watch to fail or to announce.
It stands in for a watching source (syncrepl, a file watch): the service side
is what is under test, so the source is as small as it can be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
from pydantic import BaseModel, ConfigDict

from daemon.hookspecs import hookimpl
from daemon.model import Snapshot, User, content_hash, make_group
from daemon.runtime import PluginContext
from daemon.sources import metrics
from daemon.sources.base import Announce, ChangeNotice, SourceError, SourceType


@dataclass
class Control:
    users: int = 3
    fail_next: int = 0  # how many watch starts fail at once
    starts: int = 0
    fetches: int = 0
    announce: Announce | None = None
    running: anyio.Event = field(default_factory=anyio.Event)


CONTROL = Control()


class WatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WatchedSource:
    kind = "watched"
    incremental = False

    async def fetch(self, known_version: str | None) -> Snapshot | None:
        CONTROL.fetches += 1
        users = [
            User(id=f"u{i}", username=f"u{i}", email=f"u{i}@x.example")
            for i in range(CONTROL.users)
        ]
        snap = Snapshot.of(users, [make_group("g-app", "App Users", [u.id for u in users])])
        version = "v:" + content_hash(make_group("x", str(sorted(snap.hashes().items())), []))
        if version == known_version:
            return None
        snap.version = version
        return snap

    async def watch(self, announce: Announce) -> None:
        CONTROL.starts += 1
        if CONTROL.fail_next > 0:
            CONTROL.fail_next -= 1
            raise SourceError("watched source: the test refused the watch")
        metrics.watch_connected(self.kind, True)
        CONTROL.announce = announce
        CONTROL.running.set()
        await anyio.sleep_forever()

    async def check(self) -> list[str]:
        return ["watched"]

    async def aclose(self) -> None:
        return None


def announce_users(*ids: str) -> None:
    assert CONTROL.announce is not None
    CONTROL.announce(ChangeNotice(time.time(), frozenset(ids), frozenset()))


def _create(options: BaseModel, context: PluginContext) -> WatchedSource:
    return WatchedSource()


@hookimpl
def provisiond_source_types() -> list[SourceType]:
    return [SourceType("watched", WatchOptions, _create)]
