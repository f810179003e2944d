"""``provisiond_store_seconds{operation}``: every Store method is timed, on every backend."""

from __future__ import annotations

import inspect

import pytest

from daemon.metrics import REGISTRY
from daemon.store import STORE_METHODS, StateError, Store
from daemon.store.postgres import PostgresStore
from daemon.store.sqlite import SqliteStore
from tests.store.backends import StoreFactory
from tests.store.data import ok, plan, upsert, user, want


def observed(operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "provisiond_store_seconds_count", {"operation": operation}
    )
    return value or 0.0


def test_every_protocol_method_is_timed_on_every_backend() -> None:
    protocol = {
        name
        for name, value in vars(Store).items()
        if inspect.iscoroutinefunction(value) and not name.startswith("_")
    }
    assert set(STORE_METHODS) == protocol
    assert {"commit", "record", "due", "check", "save_links"} <= protocol
    for backend in (SqliteStore, PostgresStore):
        for name in STORE_METHODS:
            assert getattr(backend, name).__code__.co_name == "timed_call", (backend, name)


async def test_each_call_is_observed_once_by_its_method_name(
    store_factory: StoreFactory,
) -> None:
    before = {name: observed(name) for name in STORE_METHODS}
    store = await store_factory.open()
    alice = user("alice")
    await store.commit("v1", [upsert(alice)], [], {"app": plan(want(alice))})
    rows = await store.due("app", 0.0, 10)
    await store.record("app", [ok(r.key, r.desired_hash, "r-1") for r in rows], 0.0)
    await store.due("app", 0.0, 10)
    await store.check()
    calls = {"open": 1, "commit": 1, "due": 2, "record": 1, "check": 1, "counts": 0}
    for name, n in calls.items():
        assert observed(name) - before[name] == n, name


async def test_a_failing_call_is_observed_too(store_factory: StoreFactory) -> None:
    store = await store_factory.open()
    await store.aclose()
    before = observed("committed")
    with pytest.raises(StateError, match="not open"):
        await store.committed()
    assert observed("committed") == before + 1
