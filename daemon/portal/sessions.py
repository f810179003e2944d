"""Server-side sign-in sessions: what a session is and where it is kept.

The browser holds only a random session id with an HMAC over it (see
:mod:`daemon.portal.cookies`); everything else stays here, so a session can be
revoked at any moment. :class:`MemorySessionStore` keeps sessions in this
process: a restart signs everyone out, and replicas do not share sessions.
A database-backed store for high availability implements the same
:class:`SessionStore` protocol.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

#: Sessions held at most by :class:`MemorySessionStore`; beyond it the least
#: recently used is dropped (its user signs in again).
DEFAULT_CAPACITY: Final = 100_000


def new_session_id() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class IdpSession:
    """One signed-in browser. Times are Unix seconds."""

    user_id: str
    username: str
    authenticated_at: float
    last_seen: float
    id: str = field(default_factory=new_session_id)
    #: The SAML SessionIndex of assertions issued in this session (used by logout).
    session_index: str = field(default_factory=lambda: "_s" + secrets.token_hex(16))

    def expired(self, now: float, idle_timeout: float, absolute_timeout: float) -> bool:
        """Whether the idle or the absolute timeout has passed."""
        return (
            now - self.last_seen >= idle_timeout or now - self.authenticated_at >= absolute_timeout
        )

    def touched(self, now: float) -> IdpSession:
        """This session, seen at ``now``."""
        return replace(self, last_seen=now)


class SessionStore(Protocol):
    """Where sessions live. Implementations must be safe for concurrent requests."""

    async def get(self, session_id: str) -> IdpSession | None:
        """The session, or ``None`` if unknown or revoked."""
        ...

    async def put(self, session: IdpSession) -> None:
        """Create or update ``session``."""
        ...

    async def delete(self, session_id: str) -> None:
        """Revoke one session (no error if it is unknown)."""
        ...

    async def delete_by_index(self, session_index: str) -> int:
        """Revoke the session with this SAML SessionIndex; return how many were revoked."""
        ...

    async def delete_user(self, user_id: str) -> int:
        """Revoke every session of a user; return how many were revoked."""
        ...


class MemorySessionStore:
    """An in-process :class:`SessionStore` bounded to ``capacity`` sessions."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._sessions: OrderedDict[str, IdpSession] = OrderedDict()

    # No awaits inside the methods: under asyncio each runs atomically.

    async def get(self, session_id: str) -> IdpSession | None:
        """See :meth:`SessionStore.get`."""
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions.move_to_end(session_id)
        return session

    async def put(self, session: IdpSession) -> None:
        """See :meth:`SessionStore.put`."""
        self._sessions[session.id] = session
        self._sessions.move_to_end(session.id)
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)

    async def delete(self, session_id: str) -> None:
        """See :meth:`SessionStore.delete`."""
        self._sessions.pop(session_id, None)

    async def delete_by_index(self, session_index: str) -> int:
        """See :meth:`SessionStore.delete_by_index`."""
        return self._delete_where(lambda s: s.session_index == session_index)

    async def delete_user(self, user_id: str) -> int:
        """See :meth:`SessionStore.delete_user`."""
        return self._delete_where(lambda s: s.user_id == user_id)

    def __len__(self) -> int:
        return len(self._sessions)

    def _delete_where(self, match: Callable[[IdpSession], bool]) -> int:
        doomed = [sid for sid, s in self._sessions.items() if match(s)]
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)
