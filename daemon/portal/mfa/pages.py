"""The second-factor pages: ``/mfa`` (the challenge) and ``/account/security`` (the factors).

``/mfa?next=...`` asks a signed-in user for a code from the authenticator
app or a recovery code, and sends the browser on to ``next`` (a local path)
once one is right. A user without a second factor is sent to enrol first.

``/account/security`` lists the user's factors, enrols an authenticator app
(a QR code and the key as text, confirmed by a first code), shows recovery
codes once, and removes factors. Every change needs a password typed in the
last :data:`FRESH_PASSWORD` seconds and, once the user has a second factor,
one passed in this session. The key of an enrolment in progress travels in
the form sealed with the MFA key and bound to the session, never in clear.

The passkey parts are filled in by ``mfa_passkey.html`` and
``security_passkeys.html`` (templates included by these pages).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from aiohttp import web
from markupsafe import Markup

from daemon.portal.mfa.factors import Outcome
from daemon.portal.mfa.flow import (
    CHALLENGE_PATH,
    SECURITY_PATH,
    challenge_url,
    second_factor_done,
    security_url,
)
from daemon.portal.mfa.keys import MfaKeyError, MfaKeyNotCurrent
from daemon.portal.paths import local_path
from daemon.portal.site import PORTAL, Portal, SignedIn, client_address
from daemon.store import FactorRecord

#: A change on ``/account/security`` needs a password typed this recently (seconds).
FRESH_PASSWORD: Final = 10 * 60.0
#: How long an enrolment form (its sealed key) may wait for its first code (seconds).
ENROL_LIFETIME: Final = 10 * 60.0

FORM_EXPIRED: Final = "This form has expired. Go back, reload the page and try again."
CODE_WRONG: Final = "That code is not right. Check it and try again."
CODE_REPLAYED: Final = "That code was already used. Wait for the next code, then try again."
CODE_MALFORMED: Final = "Enter the 6-digit code your authenticator app shows."
KEY_NOT_SHARED: Final = (
    "Second factors cannot be set up on this server right now. Please tell your administrator."
)
RECOVERY_WRONG: Final = "That recovery code is not right, or it was already used."
THROTTLED: Final = "Too many wrong codes. Wait a few minutes, then try again."
#: What ``?done=`` on ``/account/security`` says (fixed texts, never from the query).
NOTICES: Final = {
    "totp": "Your authenticator app is set up.",
    "removed": "The factor was removed.",
    "gone": "That factor was already removed.",
    "passkey": "Your passkey is added.",
    "renamed": "The passkey was renamed.",
}
KIND_NAMES: Final = {"totp": "Authenticator app", "passkey": "Passkey"}
_MAX_CODE: Final = 64
_MAX_FIELD: Final = 4096


# -- /mfa --------------------------------------------------------------------------


async def challenge_page(request: web.Request) -> web.StreamResponse:
    """GET /mfa: the challenge, or enrolment for a user who has no second factor."""
    portal = request.app[PORTAL]
    next_path = local_path(request.query.get("next"))
    signed_in = await portal.signed_in(request)
    if signed_in is None:
        raise portal.login_redirect(challenge_url(next_path))
    kinds = await portal.factors.kinds(signed_in.user.id)
    if not kinds:
        raise web.HTTPSeeOther(security_url(next_path, enrol=True))
    return await _challenge(request, portal, signed_in, next_path, kinds)


async def challenge_submit(request: web.Request) -> web.StreamResponse:
    """POST /mfa: a TOTP code (``factor=totp``) or a recovery code (``factor=recovery``)."""
    portal = request.app[PORTAL]
    form = await request.post()
    next_path = local_path(_text(form, "next", _MAX_FIELD))
    signed_in = await portal.signed_in(request)
    if signed_in is None:
        raise portal.login_redirect(challenge_url(next_path))
    if not portal.key.csrf_ok(signed_in.session.id, _text(form, "csrf", 128)):
        return portal.refused(request, FORM_EXPIRED, reason="csrf", status=400)
    factor = "recovery" if _text(form, "factor", 16) == "recovery" else "totp"
    code = _text(form, "code", _MAX_CODE)
    user_id, client = signed_in.user.id, client_address(request)
    if factor == "recovery":
        outcome = await portal.factors.use_recovery_code(user_id, code, client=client)
    else:
        outcome = await portal.factors.verify_totp(user_id, code, client=client)
    if outcome is Outcome.SUCCESS:
        await second_factor_done(portal, request, signed_in, factor)
        raise web.HTTPSeeOther(next_path)
    status, message = _refusal(outcome, factor)
    kinds = await portal.factors.kinds(user_id)
    return await _challenge(
        request, portal, signed_in, next_path, kinds, error=message, status=status, tab=factor
    )


async def _challenge(
    request: web.Request,
    portal: Portal,
    signed_in: SignedIn,
    next_path: str,
    kinds: frozenset[str],
    *,
    error: str | None = None,
    status: int = 200,
    tab: str = "totp",
) -> web.Response:
    return portal.render(
        request,
        "mfa.html",
        status=status,
        next=next_path,
        csrf=portal.csrf_token(signed_in.session.id),
        signed_in=signed_in,
        kinds=kinds,
        error=error,
        tab=tab,
        # The passkey button runs /static/passkey.js; the page has no other script.
        scripts="passkey" in kinds,
    )


def _refusal(outcome: Outcome, factor: str) -> tuple[int, str]:
    if outcome is Outcome.THROTTLED:
        return 429, THROTTLED
    if factor == "recovery":
        return 401, RECOVERY_WRONG
    if outcome is Outcome.REPLAYED:
        return 401, CODE_REPLAYED
    if outcome is Outcome.MALFORMED:
        return 401, CODE_MALFORMED
    return 401, CODE_WRONG


# -- /account/security -------------------------------------------------------------


async def security_page(request: web.Request) -> web.StreamResponse:
    """GET /account/security: the factors, and enrolment of an authenticator app."""
    portal = request.app[PORTAL]
    next_path = local_path(request.query.get("next"), default="")
    enrol = request.query.get("enrol") == "1"
    signed_in = await portal.signed_in(request)
    if signed_in is None:
        raise portal.login_redirect(security_url(next_path, enrol=enrol))
    notice = NOTICES.get(request.query.get("done", ""))
    return await _security(request, portal, signed_in, next_path, enrol=enrol, notice=notice)


async def totp_submit(request: web.Request) -> web.StreamResponse:
    """POST /account/security/totp: the first code confirms the key shown in the form."""
    portal = request.app[PORTAL]
    change = await _change(request, portal)
    if isinstance(change, web.Response):
        return change
    signed_in, form, next_path, enrol = change.signed_in, change.form, change.next, change.enrol
    records = await portal.factors.listing(signed_in.user.id)
    if any(r.kind == "totp" for r in records):
        return await _security(
            request, portal, signed_in, next_path, enrol=enrol, status=409,
            error="You already have an authenticator app. Remove it first to set up another.",
        )  # fmt: skip
    secret = _unseal(portal, signed_in, _text(form, "pending", _MAX_FIELD))
    if secret is None:
        return portal.refused(request, FORM_EXPIRED, reason="expired", status=400)
    try:
        outcome = await portal.factors.confirm_totp(
            signed_in.user.id,
            secret,
            _text(form, "code", _MAX_CODE),
            client=client_address(request),
        )
    except MfaKeyNotCurrent:
        return _key_not_current(request, portal)
    if outcome is not Outcome.SUCCESS:
        status, message = _refusal(outcome, "totp")
        return await _security(
            request, portal, signed_in, next_path, enrol=enrol, status=status, error=message,
            secret=secret,
        )  # fmt: skip
    # The first code proves the new factor: this session has passed it.
    await second_factor_done(portal, request, signed_in, "totp")
    if not any(r.kind == "recovery" for r in records):
        try:
            codes = await portal.factors.new_recovery_codes(
                signed_in.user.id, client=client_address(request)
            )
        except MfaKeyNotCurrent:
            return _key_not_current(request, portal)
        return _recovery_codes(request, portal, signed_in, codes, next_path, first=True)
    raise web.HTTPSeeOther(next_path or security_url(done="totp"))


async def recovery_submit(request: web.Request) -> web.StreamResponse:
    """POST /account/security/recovery: ten new recovery codes; the old ones stop working."""
    portal = request.app[PORTAL]
    change = await _change(request, portal)
    if isinstance(change, web.Response):
        return change
    signed_in, next_path, enrol = change.signed_in, change.next, change.enrol
    if not await portal.factors.kinds(signed_in.user.id):
        return await _security(
            request, portal, signed_in, next_path, enrol=enrol, status=409,
            error="Set up an authenticator app first: recovery codes stand in for it.",
        )  # fmt: skip
    try:
        codes = await portal.factors.new_recovery_codes(
            signed_in.user.id, client=client_address(request)
        )
    except MfaKeyNotCurrent:
        return _key_not_current(request, portal)
    return _recovery_codes(request, portal, signed_in, codes, next_path, first=False)


def _key_not_current(request: web.Request, portal: Portal) -> web.Response:
    """Enrolment on a replica whose MFA key is not the store's (logged with the setting)."""
    return portal.refused(request, KEY_NOT_SHARED, reason="mfa_key", status=503)


async def remove_submit(request: web.Request) -> web.StreamResponse:
    """POST /account/security/remove: remove one factor (``factor`` is its id)."""
    portal = request.app[PORTAL]
    change = await _change(request, portal)
    if isinstance(change, web.Response):
        return change
    signed_in, next_path = change.signed_in, change.next
    factor_id = _text(change.form, "factor", 1024)
    if not factor_id or factor_id.startswith("recovery:"):
        return portal.refused(
            request, "Choose a factor to remove from the list.", reason="invalid_request"
        )
    removed = await portal.factors.remove(
        signed_in.user.id, factor_id, client=client_address(request)
    )
    raise web.HTTPSeeOther(
        security_url(next_path, enrol=change.enrol, done="removed" if removed else "gone")
    )


class _Change:
    """A change on ``/account/security`` that passed the checks: who, and the form."""

    def __init__(
        self, signed_in: SignedIn, form: Mapping[str, object], next_path: str, enrol: bool
    ) -> None:
        self.signed_in = signed_in
        self.form = form
        self.next = next_path
        self.enrol = enrol


async def _change(request: web.Request, portal: Portal) -> _Change | web.Response:
    """The change this POST asks for, once CSRF and freshness are checked; else the
    refusal of a form without its CSRF token.

    Raises the redirect to sign in again (or to pass the second factor first).
    """
    form = await request.post()
    next_path = local_path(_text(form, "next", _MAX_FIELD), default="")
    enrol = _text(form, "enrol", 4) == "1"
    back = security_url(next_path, enrol=enrol)
    signed_in = await portal.signed_in(request)
    if signed_in is None:
        raise portal.login_redirect(back)
    if not portal.key.csrf_ok(signed_in.session.id, _text(form, "csrf", 128)):
        return portal.refused(request, FORM_EXPIRED, reason="csrf", status=400)
    kinds = await portal.factors.kinds(signed_in.user.id)
    confirm = _confirm_first(portal, signed_in, bool(kinds), back)
    if confirm is not None:
        raise web.HTTPSeeOther(confirm)
    return _Change(signed_in, form, next_path, enrol)


async def change_confirmation(portal: Portal, signed_in: SignedIn, back: str) -> str | None:
    """Where the user must go before changing factors (then back to ``back``); ``None``: the
    session may change them now (the rule of every change on ``/account/security``)."""
    kinds = await portal.factors.kinds(signed_in.user.id)
    return _confirm_first(portal, signed_in, bool(kinds), back)


def _confirm_first(portal: Portal, signed_in: SignedIn, has_factor: bool, back: str) -> str | None:
    """Where the user must go before a change (then back to ``back``); ``None``: nowhere."""
    session = signed_in.session
    if portal.clock() - session.authenticated_at > FRESH_PASSWORD:
        return str(portal.login_redirect(back, force=True).location)
    if has_factor and session.mfa_at is None:
        return challenge_url(back)
    return None


async def _security(
    request: web.Request,
    portal: Portal,
    signed_in: SignedIn,
    next_path: str,
    *,
    enrol: bool,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
    secret: str | None = None,
) -> web.Response:
    records = await portal.factors.listing(signed_in.user.id)
    factors = [r for r in records if r.kind != "recovery"]
    kinds = frozenset(r.kind for r in factors)
    back = security_url(next_path, enrol=enrol)
    confirm = _confirm_first(portal, signed_in, bool(kinds), back)
    enrolment = None
    if "totp" not in kinds and confirm is None:
        secret = secret or portal.factors.new_totp_secret()
        user = signed_in.user
        uri = portal.factors.totp_uri(secret, account=user.email or user.username)
        enrolment = {
            # segno's own markup, no user text in it; the page allows no script.
            "qr": Markup(portal.factors.qr_svg(uri)),  # noqa: S704
            "key": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
            "pending": _seal(portal, signed_in, secret),
        }
    return portal.render(
        request,
        "security.html",
        status=status,
        signed_in=signed_in,
        csrf=portal.csrf_token(signed_in.session.id),
        next=next_path,
        enrol=enrol,
        notice=notice,
        error=error,
        factors=[_row(r) for r in factors],
        kinds=kinds,
        recovery_left=sum(1 for r in records if r.kind == "recovery"),
        confirm=confirm,
        enrolment=enrolment,
        passkeys=[_row(r) for r in factors if r.kind == "passkey"],
        # Adding a passkey runs /static/passkey.js; the page has no other script.
        scripts=confirm is None,
    )


def _row(record: FactorRecord) -> dict[str, str]:
    return {
        "id": record.id,
        "name": record.name,
        "kind": KIND_NAMES.get(record.kind, record.kind),
        "created": _date(record.created_at),
        "used": _date(record.used_at) if record.used_at is not None else "never",
    }


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _recovery_codes(
    request: web.Request,
    portal: Portal,
    signed_in: SignedIn,
    codes: list[str],
    next_path: str,
    *,
    first: bool,
) -> web.Response:
    return portal.render(
        request,
        "recovery_codes.html",
        signed_in=signed_in,
        csrf=portal.csrf_token(signed_in.session.id),
        codes=codes,
        first=first,
        next=next_path,
    )


# -- the sealed key of an enrolment in progress -------------------------------------


def _aad(signed_in: SignedIn) -> str:
    return f"totp enrolment {signed_in.session.id}"


def _seal(portal: Portal, signed_in: SignedIn, secret: str) -> str:
    plain = json.dumps({"secret": secret, "at": portal.clock()}).encode()
    return portal.mfa_key.seal(plain, aad=_aad(signed_in))


def _unseal(portal: Portal, signed_in: SignedIn, sealed: str) -> str | None:
    """The key sealed into this session's enrolment form; ``None`` if it is not, or is old."""
    if not sealed:
        return None
    try:
        data = json.loads(portal.mfa_key.open(sealed, aad=_aad(signed_in)))
        secret, at = str(data["secret"]), float(data["at"])
    except (MfaKeyError, ValueError, KeyError, TypeError):
        return None
    if not 0 <= portal.clock() - at <= ENROL_LIFETIME:
        return None
    return secret


# -- helpers -----------------------------------------------------------------------


def _text(form: Mapping[str, object], name: str, limit: int) -> str:
    """A form field as text, cut at ``limit``; files and absent fields are empty."""
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def routes() -> list[web.RouteDef]:
    """The second-factor pages' routes."""
    return [
        web.get(CHALLENGE_PATH, challenge_page, allow_head=False),
        web.post(CHALLENGE_PATH, challenge_submit),
        web.get(SECURITY_PATH, security_page, allow_head=False),
        web.post(f"{SECURITY_PATH}/totp", totp_submit),
        web.post(f"{SECURITY_PATH}/recovery", recovery_submit),
        web.post(f"{SECURITY_PATH}/remove", remove_submit),
    ]
