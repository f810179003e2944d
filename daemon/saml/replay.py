"""Remembering message IDs so that a captured request cannot be played again."""

from __future__ import annotations

import heapq
import threading
from datetime import UTC, datetime
from typing import Final, Protocol

from daemon.saml.errors import SamlRequestError

#: Entries held at most by :class:`MemoryRequestIdStore`.
DEFAULT_CAPACITY: Final = 100_000


class RequestIdStore(Protocol):
    """Where seen request IDs are kept until they expire.

    A database-backed store implements the same method; it must make the
    check-and-insert atomic (a unique key), since two workers may race.
    """

    async def claim(self, key: str, expires_at: datetime) -> bool:
        """Record ``key`` until ``expires_at``; False if it is already recorded and unexpired."""
        ...


class MemoryRequestIdStore:
    """An in-process :class:`RequestIdStore` with expiry and a size cap.

    When full of unexpired IDs it refuses new ones rather than forgetting
    old ones, since forgetting would re-open the replay window.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._expiry: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._lock = threading.Lock()

    async def claim(self, key: str, expires_at: datetime) -> bool:
        """See :meth:`RequestIdStore.claim`."""
        return self.claim_now(key, expires_at)

    def claim_now(self, key: str, expires_at: datetime, now: datetime | None = None) -> bool:
        """Synchronous :meth:`claim`; ``now`` is for tests."""
        now = now or datetime.now(UTC)
        with self._lock:
            self._purge(now)
            known = self._expiry.get(key)
            if known is not None and known > now:
                return False
            if len(self._expiry) >= self._capacity:
                raise SamlRequestError("too many SAML requests in flight; try again shortly")
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: datetime) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires_at, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]
