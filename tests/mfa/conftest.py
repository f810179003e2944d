"""Fixtures of the second-factor tests: a fake clock, a store, a key, and ``Factors`` on them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.portal.mfa.factors import Factors
from daemon.portal.mfa.keys import STORE_KEY_ID, MfaKey
from daemon.store.sqlite import SqliteStore

# The store contract suite's factory (SQLite and PostgreSQL), for the tests of racing stores.
from tests.store.conftest import store_factory

__all__ = ["store_factory"]

#: A Unix time at the start of a TOTP step (a multiple of 30).
T0 = 1_800_000_000.0


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def key() -> MfaKey:
    return MfaKey(b"0123456789abcdef0123456789abcdef-test-key")


@pytest.fixture
async def factors(store: SqliteStore, key: MfaKey, clock: FakeClock) -> Factors:
    # The store's key, as load_mfa_key records it: enrolment seals only with that one.
    await store.set_meta(STORE_KEY_ID, key.id)
    return Factors(store, key, clock=clock, max_failures=3, window=600.0)
