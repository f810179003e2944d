"""Second factors of portal users: TOTP keys and recovery codes, kept in the state store.

:class:`Factors` is the one place that checks a code. It holds no state of
its own: everything is in the store, so every replica on a shared store sees
the same factors, the same used time steps and the same failure counts.

- **TOTP** (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps, computed by
  ``pyotp``). A code is accepted for the current step or one step either
  side (clock drift), and each step only once per user: the factor's
  ``data`` records the last step used, and a use moves it forward with
  :meth:`Store.swap_factor` from the data that was read, so of two requests
  racing with one code only one succeeds. The secret is sealed with the
  :class:`~daemon.portal.mfa.keys.MfaKey`, bound to the user and factor id.
- **Recovery codes**: ten random codes, shown once, kept only as keyed
  digests (one factor record each, id ``recovery:<digest>``), each consumed
  by :meth:`Store.delete_factor`, which succeeds once.
- **Throttle**: wrong codes of one account (TOTP and recovery codes alike)
  are failure rows in the store; past ``max_failures`` within ``window``
  seconds every code is refused, a right one too, until the oldest ages out.
  Malformed input (not six digits, not a recovery code's shape) is refused
  and audited without spending that budget: it cannot be a guess.

Every result is counted in ``provisiond_mfa_total{factor,result}`` and
written to the audit log; no code or secret is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from typing import Any, Final

import pyotp
import segno
import structlog

from daemon.portal.metrics import MFA_RESULTS
from daemon.portal.mfa.keys import SETTING, MfaKey, MfaKeyError, MfaKeyNotCurrent, key_is_current
from daemon.store import FactorRecord, Store

audit = structlog.get_logger("provisiond.audit")
log = structlog.get_logger("provisiond.portal")

#: The id of a user's one TOTP factor.
TOTP_ID: Final = "totp"
#: The prefix of a recovery code's factor id (followed by the code's keyed digest).
RECOVERY_PREFIX: Final = "recovery:"
#: Kinds that are a second factor on their own (recovery codes are a way back in, not one).
SECOND_FACTORS: Final = frozenset({"totp", "passkey"})

TOTP_DIGITS: Final = 6
TOTP_STEP: Final = 30
#: Steps accepted either side of the current one.
TOTP_DRIFT: Final = 1
RECOVERY_CODES: Final = 10
# 12 base32 characters: 60 random bits per code, written xxxx-xxxx-xxxx.
_RECOVERY_CHARS: Final = 12
_BASE32: Final = "abcdefghijklmnopqrstuvwxyz234567"
# Longer input is refused before any work is done with it.
_MAX_INPUT: Final = 64
_SEPARATORS: Final = re.compile(r"[\s\-]+")
_SECRET_SHAPE: Final = re.compile(r"[A-Z2-7]{16,128}")
_SWAP_ATTEMPTS: Final = 3


class Outcome(StrEnum):
    """What became of one code."""

    SUCCESS = "success"
    #: Wrong code, unknown recovery code, or no such factor.
    FAILURE = "failure"
    #: A right TOTP code for a time step that was already used.
    REPLAYED = "replayed"
    #: Too many wrong codes for the account lately; not checked.
    THROTTLED = "throttled"
    #: Not the shape of a code at all; refused unchecked, not counted against the account.
    MALFORMED = "malformed"


def _totp_aad(user_id: str) -> str:
    return f"factor:{user_id}:{TOTP_ID}"


def _digits(code: str) -> str | None:
    """The six digits of a typed TOTP code (spaces allowed), or ``None``."""
    if len(code) > _MAX_INPUT:
        return None
    code = _SEPARATORS.sub("", code)
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    return code


def normalise_recovery_code(code: str) -> str | None:
    """A typed recovery code without case, blanks and dashes, or ``None`` if it has not the
    shape of one."""
    if len(code) > _MAX_INPUT:
        return None
    code = _SEPARATORS.sub("", code).lower()
    if len(code) != _RECOVERY_CHARS or any(c not in _BASE32 for c in code):
        return None
    return code


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_BASE32) for _ in range(_RECOVERY_CHARS))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def _valid_secret(secret: str) -> bool:
    if not _SECRET_SHAPE.fullmatch(secret):
        return False
    try:
        base64.b32decode(secret + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        return False
    return True


class Factors:
    """Enrol, check and remove the second factors of portal users.

    ``clock`` gives Unix seconds (a fake one in tests); ``max_failures``
    wrong codes per account within ``window`` seconds throttle it;
    ``issuer`` is the name authenticator apps show. Methods that act for a
    request take the client's address as ``client``, for the audit log.
    """

    def __init__(
        self,
        store: Store,
        key: MfaKey,
        *,
        clock: Callable[[], float] = time.time,
        max_failures: int = 5,
        window: float = 900.0,
        issuer: str = "provisiond",
    ) -> None:
        self.store = store
        self.key = key
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.issuer = issuer

    # -- what a user has ----------------------------------------------------------------

    async def kinds(self, user_id: str) -> frozenset[str]:
        """The kinds of second factor the user has enrolled (``"totp"``, ``"passkey"``);
        recovery codes alone are none."""
        return frozenset(f.kind for f in await self.store.factors(user_id)) & SECOND_FACTORS

    async def listing(self, user_id: str) -> list[FactorRecord]:
        """The user's factors, oldest first, for pages and the CLI. A TOTP factor's
        ``data`` comes without its (sealed) secret."""
        return [_shown(f) for f in await self.store.factors(user_id)]

    async def recovery_codes_left(self, user_id: str) -> int:
        """How many unused recovery codes the user has."""
        return sum(f.kind == "recovery" for f in await self.store.factors(user_id))

    # -- TOTP ------------------------------------------------------------------------------

    def new_totp_secret(self) -> str:
        """A new random TOTP secret (160 bits, base32), to show and confirm."""
        return pyotp.random_base32()

    def totp_uri(self, secret: str, *, account: str) -> str:
        """The ``otpauth://`` URI authenticator apps read from the QR code."""
        return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=self.issuer)

    def qr_svg(self, uri: str) -> str:
        """``uri`` as a QR code in inline ``<svg>`` markup: no XML declaration, no external
        reference, a white background with a quiet zone, about 200 to 300 pixels wide."""
        qr = segno.make(uri, error="m")
        width, _ = qr.symbol_size(scale=1, border=4)
        scale = max(3, 250 // width)
        svg: str = qr.svg_inline(
            scale=scale,
            border=4,
            light="#fff",
            dark="#000",
            title="QR code for your authenticator app",
        )
        return svg

    async def confirm_totp(
        self,
        user_id: str,
        secret: str,
        code: str,
        *,
        name: str = "Authenticator app",
        client: str | None = None,
    ) -> Outcome:
        """Enrol ``secret`` as the user's TOTP factor if ``code`` is right for it now.

        On :attr:`Outcome.SUCCESS` the secret is stored sealed (replacing an
        earlier TOTP factor) and the code's time step counts as used. A wrong
        code here is not counted against the account: whoever types it holds
        the secret already.
        """
        digits = _digits(code)
        if digits is None or not _valid_secret(secret):
            return self._refused(user_id, "totp", Outcome.MALFORMED, client, "enrolment")
        now = self.clock()
        step = _matching_step(secret, digits, now)
        if step is None:
            return self._refused(user_id, "totp", Outcome.FAILURE, client, "enrolment")
        await self._check_key()
        data = _totp_data(self.key.seal(secret.encode("ascii"), aad=_totp_aad(user_id)), step)
        await self.store.put_factor(
            FactorRecord(user_id, TOTP_ID, "totp", name, data, created_at=now, used_at=now)
        )
        MFA_RESULTS.labels("totp", "enrolled").inc()
        audit.info("mfa enrolled", **_fields(user_id, "totp", client))
        return Outcome.SUCCESS

    async def verify_totp(self, user_id: str, code: str, *, client: str | None = None) -> Outcome:
        """Check a TOTP code as the user's second factor (see the module's description).

        Raises :class:`~daemon.portal.mfa.keys.MfaKeyError` if the stored
        secret does not open with the key (the record was altered).
        """
        digits = _digits(code)
        if digits is None:
            return self._refused(user_id, "totp", Outcome.MALFORMED, client, "malformed")
        if await self._throttled(user_id):
            return self._refused(user_id, "totp", Outcome.THROTTLED, client, "throttled")
        for _ in range(_SWAP_ATTEMPTS):
            record = _totp(await self.store.factors(user_id))
            if record is None:
                return await self._failed(user_id, "totp", client, "no TOTP factor")
            sealed, secret, last_step = self._open_totp(record)
            now = self.clock()
            step = _matching_step(secret, digits, now)
            if step is None:
                return await self._failed(user_id, "totp", client, "wrong code")
            if step <= last_step:
                await self._count_failure(user_id)
                return self._refused(user_id, "totp", Outcome.REPLAYED, client, "time step used")
            new_data = _totp_data(sealed, step)
            if await self.store.swap_factor(user_id, TOTP_ID, record.data, new_data, now):
                return await self._succeeded(user_id, "totp", client)
            # Someone else moved the factor on since it was read: look again.
        await self._count_failure(user_id)
        return self._refused(user_id, "totp", Outcome.REPLAYED, client, "time step used")

    def _open_totp(self, record: FactorRecord) -> tuple[str, str, int]:
        """The factor's sealed secret, the secret, and the last time step used."""
        try:
            data = json.loads(record.data)
            sealed, last_step = data["secret"], data["last_step"]
            if not isinstance(sealed, str) or not isinstance(last_step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise MfaKeyError(
                f"the TOTP factor of user {record.user_id} in the state store is not one "
                "provisiond wrote; `provisiond mfa reset` the user"
            ) from None
        secret = self.key.open(sealed, aad=_totp_aad(record.user_id)).decode("ascii")
        return sealed, secret, last_step

    # -- recovery codes ----------------------------------------------------------------------

    async def new_recovery_codes(self, user_id: str, *, client: str | None = None) -> list[str]:
        """Ten new recovery codes for the user, replacing any left; shown once, kept only as
        keyed digests."""
        await self._check_key()
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
        await self.store.delete_factors(user_id, kind="recovery")
        now = self.clock()
        for code in codes:
            normal = normalise_recovery_code(code)
            assert normal is not None
            fid = self._recovery_id(user_id, normal)
            await self.store.put_factor(
                FactorRecord(user_id, fid, "recovery", "recovery code", "{}", created_at=now)
            )
        MFA_RESULTS.labels("recovery", "enrolled").inc()
        audit.info("mfa enrolled", count=len(codes), **_fields(user_id, "recovery", client))
        return codes

    async def use_recovery_code(
        self, user_id: str, code: str, *, client: str | None = None
    ) -> Outcome:
        """Consume one of the user's recovery codes (case, blanks and dashes do not matter);
        each works once."""
        normal = normalise_recovery_code(code)
        if normal is None:
            return self._refused(user_id, "recovery", Outcome.MALFORMED, client, "malformed")
        if await self._throttled(user_id):
            return self._refused(user_id, "recovery", Outcome.THROTTLED, client, "throttled")
        if await self.store.delete_factor(user_id, self._recovery_id(user_id, normal)):
            return await self._succeeded(user_id, "recovery", client)
        return await self._failed(user_id, "recovery", client, "unknown or used code")

    async def _check_key(self) -> None:
        """Refuse to seal or digest with a key that is not the store's (several replicas with
        their own generated keys): what it wrote would not open on the others."""
        if not await key_is_current(self.store, self.key):
            log.error(
                "enrolment refused: another replica's MFA key is the state store's; set "
                f"{SETTING} to one key file on every replica",
                key_id=self.key.id,
            )
            raise MfaKeyNotCurrent(
                f"this replica's MFA key {self.key.id} is not the state store's; set {SETTING} "
                "to one key file on every replica"
            )

    def _recovery_id(self, user_id: str, normal: str) -> str:
        return RECOVERY_PREFIX + self.key.digest("recovery", f"{user_id}\0{normal}")

    # -- removing ----------------------------------------------------------------------------

    async def remove(self, user_id: str, factor_id: str, *, client: str | None = None) -> bool:
        """Remove one factor of the user; ``False`` if the user has no such factor."""
        kind = next((f.kind for f in await self.store.factors(user_id) if f.id == factor_id), None)
        if kind is None or not await self.store.delete_factor(user_id, factor_id):
            return False
        MFA_RESULTS.labels(kind, "removed").inc()
        audit.info("mfa removed", **_fields(user_id, kind, client))
        return True

    async def reset(self, user_id: str, *, client: str | None = None, by: str | None = None) -> int:
        """Remove every factor of the user (an operator's reset); how many there were.

        The caller revokes the user's sessions if it should.
        """
        return await reset_factors(self.store, user_id, client=client, by=by)

    # -- throttle and outcomes -----------------------------------------------------------------

    def _throttle_key(self, user_id: str) -> str:
        return "mfa:" + self.key.digest("throttle", user_id)

    async def _throttled(self, user_id: str) -> bool:
        since = self.clock() - self.window
        return await self.store.count_failures(self._throttle_key(user_id), since) >= (
            self.max_failures
        )

    async def _count_failure(self, user_id: str) -> None:
        now = self.clock()
        await self.store.add_failures([self._throttle_key(user_id)], now, now + self.window)

    async def _failed(self, user_id: str, factor: str, client: str | None, reason: str) -> Outcome:
        await self._count_failure(user_id)
        return self._refused(user_id, factor, Outcome.FAILURE, client, reason)

    async def _succeeded(self, user_id: str, factor: str, client: str | None) -> Outcome:
        await self.store.clear_failures(self._throttle_key(user_id))
        MFA_RESULTS.labels(factor, "success").inc()
        audit.info("mfa used", **_fields(user_id, factor, client))
        return Outcome.SUCCESS

    def _refused(
        self, user_id: str, factor: str, outcome: Outcome, client: str | None, reason: str
    ) -> Outcome:
        # The metric's results are fixed words; a malformed code is a failure there.
        result = "failure" if outcome is Outcome.MALFORMED else outcome.value
        MFA_RESULTS.labels(factor, result).inc()
        audit.warning(
            "mfa failed", result=outcome.value, reason=reason, **_fields(user_id, factor, client)
        )
        return outcome


async def reset_factors(
    store: Store, user_id: str, *, client: str | None = None, by: str | None = None
) -> int:
    """Delete every factor of the user, counted and audited as ``mfa reset``; how many there
    were. Needs no key: ``provisiond mfa reset`` runs it without the key file."""
    kinds = sorted({f.kind for f in await store.factors(user_id)})
    count = await store.delete_factors(user_id)
    for kind in kinds:
        MFA_RESULTS.labels(kind, "reset").inc()
    extra: dict[str, Any] = {"by": by} if by is not None else {}
    audit.warning(
        "mfa reset", factors=count, kinds=",".join(kinds), **extra, **_fields(user_id, None, client)
    )
    return count


def _fields(user_id: str, factor: str | None, client: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"user_id": user_id}
    if factor is not None:
        fields["factor"] = factor
    if client is not None:
        fields["client"] = client
    return fields


def _totp(records: list[FactorRecord]) -> FactorRecord | None:
    return next((f for f in records if f.id == TOTP_ID and f.kind == "totp"), None)


def _totp_data(sealed: str, last_step: int) -> str:
    return json.dumps({"secret": sealed, "last_step": last_step}, sort_keys=True)


def _shown(record: FactorRecord) -> FactorRecord:
    if record.kind != "totp":
        return record
    try:
        data = json.loads(record.data)
        shown = {"last_step": data["last_step"]} if isinstance(data, dict) else {}
    except (ValueError, KeyError):
        shown = {}
    return replace(record, data=json.dumps(shown))


def _matching_step(secret: str, digits: str, now: float) -> int | None:
    """The time step within the drift window whose code is ``digits`` (the latest, if
    several), or ``None``."""
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    current = int(now // TOTP_STEP)
    found = None
    for step in range(current - TOTP_DRIFT, current + TOTP_DRIFT + 1):
        # Every candidate is compared, in constant time, whichever matches.
        if hmac.compare_digest(totp.generate_otp(step), digits):
            found = step
    return found
