"""The one fixture the contract suite runs on: a store factory per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.store import Store
from tests.store.backends import FACTORIES, StoreFactory


@pytest.fixture(params=sorted(FACTORIES))
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """A factory on a new, empty database of one backend; closes what it opened."""
    backend = FACTORIES[request.param]
    backend.setup(request)
    factory = await backend.create(tmp_path, "state")
    try:
        yield factory
    finally:
        try:
            await factory.aclose()
        finally:
            await backend.dispose()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    """A freshly opened, empty store."""
    return await store_factory.open()
