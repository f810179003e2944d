"""The remote-write gate: under leader election, a request goes out only while the lease holds.

The engine sets :data:`daemon.runtime.REMOTE_WRITES` while it delivers for a
target; the transport checks it before every attempt, and never lets one
last longer than the lease has left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from scim2_models import User

from daemon.runtime import REMOTE_WRITES, RemoteWrites
from daemon.scim import ScimClient, ScimNotLeaderError, ScimTransientError, Timeouts
from tests.scim.conftest import FAST_RETRY, TOKEN
from tests.scim.faults import Fault, FaultProxy
from tests.scim.harness import unique


class Lease:
    """A lease that runs out at a wall-clock deadline the test sets."""

    def __init__(self, seconds_left: float) -> None:
        self.deadline = time.monotonic() + seconds_left

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@contextmanager
def under(lease: Lease, margin: float = 0.5) -> Iterator[None]:
    token = REMOTE_WRITES.set(RemoteWrites("target:app", lease.remaining, margin))
    try:
        yield
    finally:
        REMOTE_WRITES.reset(token)


def new_user() -> User[Any]:
    return User(user_name=f"{unique()}@example.org")


async def test_a_lost_lease_sends_nothing(client: ScimClient, proxy: FaultProxy) -> None:
    with under(Lease(-1.0)), pytest.raises(ScimNotLeaderError) as caught:
        await client.create(new_user())
    assert proxy.log == []
    assert caught.value.transient  # the object is delivered again, by the leader
    assert "no longer the leader of target:app" in str(caught.value)
    assert "not sent" in str(caught.value)


async def test_a_lease_below_the_margin_sends_nothing(
    client: ScimClient, proxy: FaultProxy
) -> None:
    with under(Lease(0.3), margin=0.5), pytest.raises(ScimNotLeaderError, match=r"under 0\.5s"):
        await client.discover()
    assert proxy.log == []


async def test_with_the_lease_held_requests_go_out(client: ScimClient, proxy: FaultProxy) -> None:
    with under(Lease(30.0)):
        created = await client.create(new_user())
    assert created.id
    assert len(proxy.requests("POST", "/Users")) == 1


async def test_no_request_outlives_the_lease(proxy: FaultProxy) -> None:
    # The configured timeout is 30 s, the lease has 1.5 s left: the hanging
    # request is abandoned when the lease runs out, and the retry never goes out.
    proxy.hang_seconds = 10.0
    async with ScimClient(
        proxy.url, lambda: TOKEN, retry=FAST_RETRY, timeouts=Timeouts(total=30.0, connect=5.0)
    ) as client:
        proxy.script(Fault.HANG, path="/ServiceProviderConfig")
        started = time.monotonic()
        with under(Lease(1.5)), pytest.raises(ScimTransientError) as caught:
            await client.discover()
        elapsed = time.monotonic() - started
    assert elapsed < 4.0
    assert isinstance(caught.value, ScimNotLeaderError)
    assert len(proxy.requests("GET", "/ServiceProviderConfig")) == 1


async def test_without_a_gate_nothing_is_limited(client: ScimClient, proxy: FaultProxy) -> None:
    assert REMOTE_WRITES.get() is None
    await client.discover()
    assert len(proxy.requests("GET", "/ServiceProviderConfig")) == 1
