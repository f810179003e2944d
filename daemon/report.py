"""What one cycle did: the report the engine fills and plugins receive.

Its own module so that the plugin contract (:mod:`daemon.hookspecs`) can name
it without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TargetReport:
    planned: int = 0
    held: int = 0
    delivered: int = 0
    failed: int = 0
    dirty: int = 0
    error: str | None = None


@dataclass
class CycleReport:
    """What one cycle did (passed to ``provisiond_cycle_finished``)."""

    id: str
    started_at: float
    finished_at: float = 0.0
    result: str = "quiet"  # ok | quiet | failed
    error: str | None = None
    snapshot_version: str | None = None
    users: int | None = None
    groups: int | None = None
    skipped: int = 0
    stale: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    targets: dict[str, TargetReport] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at
