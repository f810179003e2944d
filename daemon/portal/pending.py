"""Requests parked while the browser signs in, found again by a random handle.

An SP-initiated sign-in arrives before the user has a session: the validated
request waits here, and the login page sends the browser back with the
handle. A handle works once and for a limited time, and only for the
browser that started the sign-in: each value is parked with a binding (the
id in that browser's own cookie, kept as a SHA-256 digest), and a take with
another binding is refused and leaves the value parked for its browser. The
values live in the core's state store, so the browser may come back to any
replica, and a restart in between loses nothing. The store is bounded, and
refuses new entries when full rather than dropping ones users are waiting on.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from daemon.store import Store, StoreFull

T = TypeVar("T")

DEFAULT_CAPACITY: Final = 10_000
#: Time to type a password, and some more.
DEFAULT_LIFETIME: Final = 10 * 60.0
#: Handles are 24 random bytes in base64url (32 characters); longer ones are never ours.
_MAX_HANDLE: Final = 64


class PendingFull(Exception):
    """Too many sign-ins are in progress; the caller refuses this one."""


class ParkedElsewhere(Exception):
    """The handle was parked for another binding (another browser); it stays parked for it."""


@dataclass(frozen=True, slots=True)
class Parked(Generic[T]):
    """A parked value and when it was parked (Unix seconds)."""

    value: T
    parked_at: float
    expires_at: float


class PendingRequests(Generic[T]):
    """Handle → parked value, single use (also across replicas), expiring.

    ``namespace`` keeps the handles of one user of the store apart from
    another's (one per sign-on endpoint): a handle parked by one application
    is unknown to every other. Values go to the store as text, through
    ``encode`` and ``decode``, inside a JSON envelope with the binding's
    digest; a value that no longer decodes, or was parked without a binding
    (by a version before bindings), counts as expired.
    """

    def __init__(
        self,
        store: Store,
        namespace: str,
        *,
        encode: Callable[[T], str],
        decode: Callable[[str], T],
        capacity: int = DEFAULT_CAPACITY,
        lifetime: float = DEFAULT_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._encode = encode
        self._decode = decode
        self._capacity = capacity
        self._lifetime = lifetime
        self._clock = clock

    async def park(self, value: T, parked_at: float | None = None, *, binding: str) -> str:
        """Keep ``value`` for the browser ``binding`` names; return its handle.

        Raises :class:`PendingFull`.
        """
        now = self._clock()
        handle = secrets.token_urlsafe(24)
        text = json.dumps({"binding": _digest(binding), "value": self._encode(value)})
        try:
            await self._store.park(
                self._key(handle),
                text,
                now if parked_at is None else parked_at,
                now + self._lifetime,
                now,
                self._capacity,
            )
        except StoreFull:
            raise PendingFull from None
        return handle

    async def take(self, handle: str, *, binding: str | None) -> Parked[T] | None:
        """The parked value, removed; ``None`` if unknown, used or expired.

        Raises :class:`ParkedElsewhere` when it was parked for another
        ``binding`` (``None``: a browser without one); then it is put back
        as it was, for the browser it belongs to.
        """
        if len(handle) > _MAX_HANDLE:
            return None
        key = self._key(handle)
        found = await self._store.take_parked(key, self._clock())
        if found is None:
            return None
        try:
            envelope = json.loads(found.value)
            bound, text = envelope["binding"], envelope["value"]
            if not isinstance(bound, str) or not isinstance(text, str):
                raise TypeError("a parked value's binding and value are text")
            value = self._decode(text)
        except (ValueError, KeyError, TypeError):
            return None
        if binding is None or not hmac.compare_digest(bound, _digest(binding)):
            # Lost only if the store filled up in between: then that browser starts again.
            with contextlib.suppress(StoreFull):
                await self._store.park(
                    key,
                    found.value,
                    found.parked_at,
                    found.expires_at,
                    self._clock(),
                    self._capacity,
                )
            raise ParkedElsewhere
        return Parked(value, found.parked_at, found.expires_at)

    def _key(self, handle: str) -> str:
        return f"{self._namespace} {handle}"


def _digest(binding: str) -> str:
    # Bindings are random ids; the store keeps only their digest.
    return hashlib.sha256(binding.encode("utf-8")).hexdigest()
