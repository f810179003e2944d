"""The built-in ``log`` target: the reference for plugin authors.

It writes every change it receives as one structured log line. With the
``journal`` option it also keeps an append-only JSON-lines file of what it
applied, and, like a real application, treats a create of something it
already holds as "already there". That is the at-least-once contract every
target meets: after a crash a delivery may come twice, and the second one
must change nothing.

A plugin is a module with hook implementations; this one offers one target
kind through :func:`provisiond_target_types`. Delivery itself is
``LogTarget.deliver``, which the engine calls for each batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import anyio
import structlog
from pydantic import BaseModel, ConfigDict

from daemon.changes import describe
from daemon.hookspecs import hookimpl
from daemon.model import content_hash, encode
from daemon.runtime import PluginContext
from daemon.targets.base import Delta, Outcome, TargetType


class LogOptions(BaseModel):
    """``targets[].options`` for ``kind: log``."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning"] = "info"
    #: Append what was applied to this JSON-lines file (relative to the config file).
    journal: Path | None = None


class LogTarget:
    """Logs each change; optionally journals the applied state."""

    kind = "log"

    def __init__(self, name: str, options: LogOptions, context: PluginContext) -> None:
        self.name = name
        self.options = options
        self.log = structlog.get_logger("provisiond.target.log").bind(target=name)
        self.journal: Path | None = None
        # What the journal says this target holds: key -> content hash.
        self.holding: dict[str, str] = {}
        if options.journal is not None:
            path = options.journal
            self.journal = path if path.is_absolute() else context.config_dir / path
            self.holding = _replay(self.journal)

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        emit = getattr(self.log, self.options.level)
        entries: list[dict[str, object]] = []
        outcomes: list[Outcome] = []
        for delta in deltas:
            key = f"{delta.kind}:{delta.object_id}"
            for change in delta.changes:
                emit("change", object=key, change=change.name, what=describe(change))
            entry = self._apply(key, delta)
            if entry is not None:
                entries.append(entry)
            outcomes.append(Outcome.success(delta, remote_id=f"log:{key}"))
        if self.journal is not None and entries:
            await anyio.to_thread.run_sync(_append, self.journal, entries)
        return outcomes

    def _apply(self, key: str, delta: Delta) -> dict[str, object] | None:
        if self.journal is None:
            return None
        if delta.desired is None:
            if self.holding.pop(key, None) is None:
                return None  # already gone
            return {"op": "delete", "key": key}
        new_hash = content_hash(delta.desired)
        held = self.holding.get(key)
        if held == new_hash:
            return None  # a repeated delivery: nothing to do
        self.holding[key] = new_hash
        op = "create" if held is None else "update"
        return {"op": op, "key": key, "hash": new_hash, "record": json.loads(encode(delta.desired))}

    async def check(self, write_test: bool = False) -> list[str]:
        where = f", journal {self.journal}" if self.journal else ""
        return [f"log target {self.name}: writes changes to the log{where}"]

    async def aclose(self) -> None:
        return None


def _replay(path: Path) -> dict[str, str]:
    holding: dict[str, str] = {}
    if not path.exists():
        return holding
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # a line torn by a crash ends the journal
            if entry.get("op") == "delete":
                holding.pop(entry["key"], None)
            else:
                holding[entry["key"]] = entry["hash"]
    return holding


def _append(path: Path, entries: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _create(name: str, options: BaseModel, context: PluginContext) -> LogTarget:
    assert isinstance(options, LogOptions)
    return LogTarget(name, options, context)


@hookimpl
def provisiond_target_types() -> list[TargetType]:
    return [
        TargetType(
            kind="log",
            options=LogOptions,
            create=_create,
            description="writes every change as a structured log line (reference target)",
        )
    ]
