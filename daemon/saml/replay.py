"""Remembering message IDs so that a captured request cannot be played again."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Protocol

from daemon.saml.errors import SamlRequestError
from daemon.store import Store, StoreFull

#: Entries held at most by :class:`MemoryRequestIdStore` and :class:`StoreRequestIdStore`.
DEFAULT_CAPACITY: Final = 100_000
_FULL: Final = "too many SAML requests in flight; try again shortly"


class RequestIdStore(Protocol):
    """Where seen request IDs are kept until they expire.

    A database-backed store (:class:`StoreRequestIdStore`) must make the
    check-and-insert atomic (a unique key), since two replicas may race.
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
                raise SamlRequestError(_FULL)
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


class StoreRequestIdStore:
    """A :class:`RequestIdStore` in the core's state store, shared by every replica on it.

    A request accepted by one replica is refused as a replay by all the
    others, and after a restart. Like the memory store it refuses new IDs
    when ``capacity`` unexpired ones are held, and the store purges expired ones.
    """

    def __init__(
        self,
        store: Store,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._capacity = capacity
        self._clock = clock

    async def claim(self, key: str, expires_at: datetime) -> bool:
        """See :meth:`RequestIdStore.claim`."""
        try:
            return await self._store.claim(
                f"saml {key}", expires_at.timestamp(), self._clock(), self._capacity
            )
        except StoreFull:
            raise SamlRequestError(_FULL) from None
