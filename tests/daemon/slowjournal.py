"""A test plugin: the log target's journal, slowed per batch so a kill lands mid-cycle.

Loaded through the configuration's ``plugins`` list, like any plugin module.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from pydantic import BaseModel

from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.targets.base import Delta, Outcome, TargetType
from daemon.targets.log import LogOptions, LogTarget


class SlowOptions(LogOptions):
    batch_delay: float = 0.02


class SlowJournalTarget(LogTarget):
    kind = "slow-journal"

    def __init__(self, name: str, options: SlowOptions, context: PluginContext) -> None:
        super().__init__(name, options, context)
        self.batch_delay = options.batch_delay

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        await anyio.sleep(self.batch_delay)
        return await super().deliver(deltas)


def _create(name: str, options: BaseModel, context: PluginContext) -> SlowJournalTarget:
    assert isinstance(options, SlowOptions)
    return SlowJournalTarget(name, options, context)


@hookimpl
def provisiond_target_types() -> list[TargetType]:
    return [TargetType("slow-journal", SlowOptions, _create)]
