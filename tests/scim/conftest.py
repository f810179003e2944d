"""Fixtures for the SCIM engine tests: a real scim2-server, and a fault proxy before it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from daemon.scim import RetryPolicy, ScimClient, Timeouts
from tests.scim.faults import FaultProxy
from tests.scim.harness import ScimServer, scim_server

__all__ = ["scim_server"]

FAST_RETRY = RetryPolicy(max_attempts=4, max_total_wait=10.0, base_delay=0.02, max_delay=0.1)
TOKEN = "initial-token-0123456789"


@pytest.fixture
async def proxy(scim_server: ScimServer) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the shared scim2-server (no faults until scripted)."""
    async with FaultProxy(scim_server.url) as running:
        yield running


@pytest.fixture
async def client(proxy: FaultProxy) -> AsyncIterator[ScimClient]:
    """A client talking to the proxy, with quick retries and a 1 s timeout."""
    async with ScimClient(
        proxy.url,
        lambda: TOKEN,
        retry=FAST_RETRY,
        timeouts=Timeouts(total=1.0, connect=1.0),
    ) as running:
        yield running
