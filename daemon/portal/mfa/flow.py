"""The second factor in the sign-in flow: when a session needs one, and marking it passed.

A session starts with the password alone (``IdpSession.mfa_at`` is ``None``).
When the user passes a second factor on ``/mfa`` (a TOTP code, a recovery
code, a passkey), :func:`second_factor_done` records the time and the kind
in the session row, so every replica sees it. The sign-on endpoint asks
:func:`needs_second_factor` before it issues a Response to an application
that requires MFA.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final
from urllib.parse import urlencode

import structlog
from aiohttp import web

from daemon.portal.sessions import IdpSession
from daemon.portal.site import Portal, SignedIn, client_address

audit = structlog.get_logger("provisiond.audit")

#: Where the browser passes a second factor; ``next`` is where it goes afterwards.
CHALLENGE_PATH: Final = "/mfa"
#: Where the user manages factors; ``enrol=1`` explains that one is needed to go on.
SECURITY_PATH: Final = "/account/security"


def needs_second_factor(session: IdpSession, *, since: float | None) -> bool:
    """Whether ``session`` has yet to pass a second factor.

    ``since`` (Unix seconds) is for ForceAuthn: a second factor passed
    before then does not count. ``None`` accepts any passed in the session.
    """
    if session.mfa_at is None:
        return True
    return since is not None and session.mfa_at < since


async def second_factor_done(
    portal: Portal, request: web.Request, signed_in: SignedIn, factor: str
) -> IdpSession:
    """Mark ``signed_in``'s session as having passed ``factor`` now, and audit it.

    ``factor`` is ``"totp"``, ``"recovery"`` or ``"passkey"``. Returns the
    updated session. If the session was revoked meanwhile (signed out on
    another replica, ``provisiond mfa reset``), nothing is recorded and the
    browser is sent to sign in again (a 303 is raised).
    """
    now = portal.clock()
    old = signed_in.session
    factors = old.factors if factor in old.factors else (*old.factors, factor)
    session = replace(old, mfa_at=now, factors=factors, last_seen=now)
    updated = await portal.update_session(request, signed_in, session)
    if updated is None:
        raise portal.login_redirect("/")
    audit.info(
        "second factor passed",
        user_id=signed_in.user.id,
        factor=factor,
        client=client_address(request),
        session=session.session_index,
    )
    return updated.session


def challenge_url(next_path: str) -> str:
    """The ``/mfa`` page, then on to ``next_path`` (a local path)."""
    return f"{CHALLENGE_PATH}?{urlencode({'next': next_path})}"


def security_url(
    next_path: str | None = None, *, enrol: bool = False, done: str | None = None
) -> str:
    """The ``/account/security`` page, then on to ``next_path``; with ``enrol``, explaining
    that a factor is needed first; ``done`` names a notice to show (see ``pages.NOTICES``)."""
    query = {
        **({"next": next_path} if next_path else {}),
        **({"enrol": "1"} if enrol else {}),
        **({"done": done} if done else {}),
    }
    return f"{SECURITY_PATH}?{urlencode(query)}" if query else SECURITY_PATH
