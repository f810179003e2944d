"""Server-side sign-in sessions: what a session is and where it is kept.

The browser holds only a random session id with an HMAC over it (see
:mod:`daemon.portal.session_key`); everything else stays on the server, so a
session can be revoked at any moment. :class:`StoreSessionStore` keeps
sessions in the core's state store, which is what the daemon uses: a restart
keeps users signed in, and every replica on a shared store sees the same
sessions. :class:`MemorySessionStore` keeps them in this process only.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from daemon.store import SessionRecord, Store

#: Sessions held at most by :class:`MemorySessionStore`; beyond it the least
#: recently used is dropped (its user signs in again).
DEFAULT_CAPACITY: Final = 100_000
#: Sessions one user keeps at most in :class:`StoreSessionStore` (browsers,
#: devices); beyond it the least recently seen of the others ends.
DEFAULT_PER_USER: Final = 50
#: :class:`StoreSessionStore` records a use at most once per this share of the
#: idle timeout (and at least once a minute): an SSO flow of a few requests
#: writes once, not at every step.
TOUCH_SHARE: Final = 0.01
TOUCH_AT_MOST_EVERY: Final = 60.0


def new_session_id() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class IdpSession:
    """One signed-in browser. Times are Unix seconds.

    ``authenticated_at`` is when the password was checked; ``mfa_at`` when a
    second factor was last passed in this session (``None``: never), and
    ``factors`` the kinds passed so far (``"totp"``, ``"recovery"``,
    ``"passkey"``), in the order first used.
    """

    user_id: str
    username: str
    authenticated_at: float
    last_seen: float
    id: str = field(default_factory=new_session_id)
    #: The SAML SessionIndex of assertions issued in this session (used by logout).
    session_index: str = field(default_factory=lambda: "_s" + secrets.token_hex(16))
    mfa_at: float | None = None
    factors: tuple[str, ...] = ()

    def expired(self, now: float, idle_timeout: float, absolute_timeout: float) -> bool:
        """Whether the idle or the absolute timeout has passed."""
        return (
            now - self.last_seen >= idle_timeout or now - self.authenticated_at >= absolute_timeout
        )

    def touched(self, now: float) -> IdpSession:
        """This session, seen at ``now``."""
        return replace(self, last_seen=now)

    @property
    def last_authenticated(self) -> float:
        """The latest authentication step of the session: the password or a second factor."""
        if self.mfa_at is None:
            return self.authenticated_at
        return max(self.authenticated_at, self.mfa_at)


class SessionStore(Protocol):
    """Where sessions live. Implementations must be safe for concurrent requests."""

    async def get(self, session_id: str) -> IdpSession | None:
        """The session, or ``None`` if unknown or revoked."""
        ...

    async def put(self, session: IdpSession) -> None:
        """Create or update ``session``."""
        ...

    async def update(self, session: IdpSession) -> bool:
        """Replace ``session`` if it still exists; ``False`` (nothing created) if it was revoked."""
        ...

    async def touch(self, session: IdpSession, now: float) -> IdpSession | None:
        """``session`` seen at ``now``, recorded; ``None`` if it was revoked meanwhile.

        A revoked session is never recreated by a touch: a sign-out on one
        replica wins over a page view on another.
        """
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

    async def update(self, session: IdpSession) -> bool:
        """See :meth:`SessionStore.update`."""
        if session.id not in self._sessions:
            return False
        await self.put(session)
        return True

    async def touch(self, session: IdpSession, now: float) -> IdpSession | None:
        """See :meth:`SessionStore.touch`."""
        if session.id not in self._sessions:
            return None
        touched = session.touched(now)
        await self.put(touched)
        return touched

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


class StoreSessionStore:
    """A :class:`SessionStore` in the core's state store, shared by every replica on it.

    Each row carries its expiry (the earlier of the idle and the absolute
    timeout), so the store can purge sessions nobody comes back to; the
    portal still checks both timeouts itself on every request. A use
    updates only ``last_seen`` and the expiry, and only when the recorded
    ``last_seen`` is older than ``touch_every`` seconds (by default 1% of the
    idle timeout, at most a minute): an idle session may end that much early.
    """

    def __init__(
        self,
        store: Store,
        *,
        idle_timeout: float,
        absolute_timeout: float,
        per_user: int = DEFAULT_PER_USER,
        touch_every: float | None = None,
    ) -> None:
        self._store = store
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._per_user = per_user
        self._touch_every = (
            min(TOUCH_AT_MOST_EVERY, idle_timeout * TOUCH_SHARE)
            if touch_every is None
            else touch_every
        )

    def _expires_at(self, session: IdpSession) -> float:
        return min(session.last_seen + self._idle, session.authenticated_at + self._absolute)

    async def get(self, session_id: str) -> IdpSession | None:
        """See :meth:`SessionStore.get`."""
        record = await self._store.get_session(session_id)
        return None if record is None else _decode(record)

    async def put(self, session: IdpSession) -> None:
        """See :meth:`SessionStore.put`."""
        fields: dict[str, object] = {
            "username": session.username,
            "authenticated_at": session.authenticated_at,
        }
        if session.mfa_at is not None:
            fields["mfa_at"] = session.mfa_at
            fields["factors"] = list(session.factors)
        data = json.dumps(fields)
        record = SessionRecord(
            id=session.id,
            session_index=session.session_index,
            user_id=session.user_id,
            data=data,
            last_seen=session.last_seen,
            expires_at=self._expires_at(session),
        )
        await self._store.put_session(record, session.last_seen, self._per_user)

    async def update(self, session: IdpSession) -> bool:
        """See :meth:`SessionStore.update`.

        The row is checked first (a touch that creates nothing), then
        replaced: a revocation on another replica between the two is the
        one moment a revoked session could come back, a window of one store
        round trip.
        """
        if not await self._store.touch_session(
            session.id, session.last_seen, self._expires_at(session)
        ):
            return False
        await self.put(session)
        return True

    async def touch(self, session: IdpSession, now: float) -> IdpSession | None:
        """See :meth:`SessionStore.touch`."""
        if 0 <= now - session.last_seen < self._touch_every:
            return session  # just read from the store, and seen a moment ago
        touched = session.touched(now)
        if not await self._store.touch_session(session.id, now, self._expires_at(touched)):
            return None
        return touched

    async def delete(self, session_id: str) -> None:
        """See :meth:`SessionStore.delete`."""
        await self._store.delete_session(session_id)

    async def delete_by_index(self, session_index: str) -> int:
        """See :meth:`SessionStore.delete_by_index`."""
        return await self._store.delete_sessions_by_index(session_index)

    async def delete_user(self, user_id: str) -> int:
        """See :meth:`SessionStore.delete_user`."""
        return await self._store.delete_user_sessions(user_id)


def _decode(record: SessionRecord) -> IdpSession | None:
    """The session a row holds; ``None`` for a row this version cannot read.

    Rows written before second factors existed have no ``mfa_at``: a session
    that passed none.
    """
    try:
        data = json.loads(record.data)
        mfa_at = data.get("mfa_at")
        return IdpSession(
            user_id=record.user_id,
            username=str(data["username"]),
            authenticated_at=float(data["authenticated_at"]),
            last_seen=record.last_seen,
            id=record.id,
            session_index=record.session_index,
            mfa_at=None if mfa_at is None else float(mfa_at),
            factors=tuple(str(f) for f in data.get("factors", ())),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
