"""Fixtures for the tests of the independent SCIM peers (and a SCIM client before them)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from daemon.scim import RetryPolicy, ScimClient
from tests.peers.harness import ScimmyServer, scimmy_server
from tests.scim.harness import scim_server

__all__ = ["scim_server", "scimmy_server"]

FAST_RETRY = RetryPolicy(max_attempts=3, max_total_wait=5.0, base_delay=0.02, max_delay=0.1)


@pytest.fixture
async def scimmy(scimmy_server: ScimmyServer) -> AsyncIterator[ScimClient]:
    """provisiond's SCIM client, discovered, against the shared SCIMMY server."""
    async with ScimClient(
        scimmy_server.url, lambda: scimmy_server.token, retry=FAST_RETRY
    ) as client:
        await client.discover()
        yield client
