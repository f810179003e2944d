"""What plugins may ask of the directory between cycles: who is this, and may they use that app.

Answers come from the committed state, so they follow the directory within
one cycle, need no restart, and are the same on every replica that shares
the state store.
"""

from __future__ import annotations

from daemon.model import User
from daemon.plugins import await_me_maybe
from daemon.sources.base import Source
from daemon.store import Store


class Directory:
    """Sign-in and authorisation questions, answered from the state store and the source."""

    def __init__(self, store: Store, source: Source) -> None:
        self.store = store
        self.source = source

    async def find_user(self, login: str) -> User | None:
        """The user whose username or email is ``login``, as of the last committed cycle."""
        if not login.strip():
            return None
        return await self.store.find_user(login)

    async def authenticate(self, login: str, password: str) -> User | None:
        """The user, if ``password`` is theirs and their account is active; else ``None``.

        The source checks the password (its optional ``authenticate`` method)
        with the username as the directory knows it; a source without one
        signs nobody in. Empty passwords never reach a source.
        """
        if not password:
            return None
        user = await self.find_user(login)
        if user is None or not user.active:
            return None
        check = getattr(self.source, "authenticate", None)
        if check is None:
            return None
        verdict = await await_me_maybe(check(user.username, password))
        return user if verdict is True else None

    async def granted(self, target: str, user: User) -> bool:
        """Whether ``user`` is active and in a group bound to ``target``."""
        return user.active and await self.store.granted(target, user.id)

    def replace_source(self, source: Source) -> None:
        """After a configuration reload."""
        self.source = source
