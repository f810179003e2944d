"""Fixtures shared by the core tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from daemon.engine import Engine, TargetSlot

from .support import FedSource, engine


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Engine]]]:
    """Builds engines over stores in ``tmp_path`` and closes the stores afterwards."""
    built: list[Engine] = []

    async def make(source: FedSource, slots: list[TargetSlot]) -> Engine:
        where = tmp_path / f"engine-{len(built)}"
        where.mkdir()
        eng = await engine(where, source, slots)
        built.append(eng)
        return eng

    yield make
    for eng in built:
        await eng.store.aclose()  # type: ignore[attr-defined]
