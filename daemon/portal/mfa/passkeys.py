"""Passkeys (WebAuthn) as a second factor: the registration and authentication ceremonies.

The ``webauthn`` library (duo-labs) builds the options and checks the
browser's answers; this module decides what is asked and what is kept:

- the relying party id is the host of ``http.public.base_url``, and the only
  origin accepted is the base URL itself. Passkeys are bound to that host by
  the authenticator: a new host name invalidates every registered passkey;
- each ceremony's challenge is parked in the state store under a random
  handle (:class:`~daemon.portal.pending.PendingRequests`), for a few minutes,
  bound to the session and the user that asked for it, and taken once: a
  replayed, expired or foreign challenge is unknown;
- a passkey is a :class:`~daemon.store.FactorRecord` of kind ``"passkey"``
  whose id is the base64url credential id; its ``data`` holds the public key,
  the signature counter, the transports and the user handle (nothing in it
  is secret);
- an assertion must come from a passkey of the same user, and the counter,
  once the authenticator keeps one (non-zero), must grow: a counter that
  stays or goes back means two copies of one key, and is refused and
  audited. The new counter is written with a compare-and-set
  (:meth:`~daemon.store.Store.swap_factor`), so of two racing uses of one
  assertion only one succeeds.

Every refusal raises :class:`PasskeyRefused` with a plain message for the
user; the ceremonies count ``provisiond_mfa_total{factor="passkey"}`` and
write the audit lines themselves.
"""

from __future__ import annotations

import base64
import json
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import structlog
import webauthn
from webauthn.helpers import (
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from daemon.model import User
from daemon.portal.metrics import MFA_RESULTS
from daemon.portal.pending import ParkedElsewhere, PendingFull, PendingRequests
from daemon.store import FactorRecord, Store

audit = structlog.get_logger("provisiond.audit")

KIND: Final = "passkey"
DEFAULT_NAME: Final = "Passkey"
#: Longest name a user may give a passkey (characters, after trimming).
MAX_NAME: Final = 64
#: Passkeys one user may register; enough for every device and a spare key or two.
MAX_PASSKEYS: Final = 20
#: How long a challenge waits for the browser's answer (the browser's own
#: prompt times out after :data:`PROMPT_TIMEOUT_MS`).
CHALLENGE_LIFETIME: Final = 5 * 60.0
PROMPT_TIMEOUT_MS: Final = 120_000
#: Challenges parked at once across the store (only signed-in sessions ask for one).
CHALLENGE_CAPACITY: Final = 10_000
_DATA_VERSION: Final = 1

Ceremony = Literal["register", "authenticate"]
#: What the library (and the base64 and CBOR decoders under it) raise for an
#: answer it cannot read or verify.
_UNVERIFIABLE: Final = (WebAuthnException, ValueError, TypeError, KeyError, IndexError)

#: Said when a challenge is unknown, used, expired, or another session's.
CHALLENGE_GONE: Final = "This passkey request has expired or was already used. Try again."
NOT_VERIFIED: Final = "The passkey could not be verified. Try again, or use another method."
NOT_YOURS: Final = "This passkey is not registered to your account."
POSSIBLE_CLONE: Final = (
    "This passkey was refused: its use counter went backwards, so it may have been copied. "
    "Use another method and tell your administrator."
)
MALFORMED: Final = "The passkey answer was malformed. Reload the page and try again."
ALREADY_REGISTERED: Final = "This passkey is already registered to your account."
TOO_MANY: Final = (
    f"You have {MAX_PASSKEYS} passkeys, the most allowed. Remove one before adding another."
)
NONE_REGISTERED: Final = "You have no passkey registered."
BUSY: Final = "Too many sign-ins are in progress. Try again in a minute."


class PasskeyRefused(Exception):
    """A ceremony was refused; ``message`` is safe to show, ``result`` is the metric label."""

    def __init__(self, message: str, *, result: str = "failure", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.result = result
        self.status = status


@dataclass(frozen=True, slots=True)
class Challenge:
    """What waits in the store between the options and the browser's answer."""

    ceremony: Ceremony
    session_id: str
    user_id: str
    challenge: str  # base64url

    def to_json(self) -> str:
        return json.dumps(
            {
                "ceremony": self.ceremony,
                "session": self.session_id,
                "user": self.user_id,
                "challenge": self.challenge,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Challenge:
        raw = json.loads(text)
        ceremony = raw["ceremony"]
        if ceremony not in ("register", "authenticate"):
            raise ValueError(f"unknown ceremony {ceremony!r}")
        return cls(ceremony, str(raw["session"]), str(raw["user"]), str(raw["challenge"]))


@dataclass(frozen=True, slots=True)
class Passkey:
    """One registered passkey, read from its factor record."""

    record: FactorRecord
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    user_handle: str  # base64url
    user_verified: bool

    @property
    def id(self) -> str:
        """The base64url credential id (the factor id)."""
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @classmethod
    def of(cls, record: FactorRecord) -> Passkey:
        """Raises ``ValueError``/``KeyError``/``TypeError`` for data this version cannot read."""
        raw = json.loads(record.data)
        return cls(
            record=record,
            public_key=b64decode(str(raw["public_key"])),
            sign_count=int(raw["sign_count"]),
            transports=tuple(str(t) for t in raw.get("transports", ())),
            user_handle=str(raw["user_handle"]),
            user_verified=bool(raw.get("uv", False)),
        )


def passkey_data(
    *,
    public_key: bytes,
    sign_count: int,
    transports: tuple[str, ...],
    user_handle: str,
    user_verified: bool,
) -> str:
    """The ``data`` JSON of a passkey's factor record."""
    return json.dumps(
        {
            "v": _DATA_VERSION,
            "public_key": b64encode(public_key),
            "sign_count": sign_count,
            "transports": list(transports),
            "user_handle": user_handle,
            "uv": user_verified,
        },
        separators=(",", ":"),
    )


def b64encode(value: bytes) -> str:
    """base64url without padding, as WebAuthn's JSON forms use it."""
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")


def b64decode(value: str) -> bytes:
    """The inverse of :func:`b64encode`; raises ``ValueError`` on anything else."""
    if not value.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def clean_name(raw: str | None) -> str:
    """A passkey's name as the user typed it: trimmed, control characters dropped,
    at most :data:`MAX_NAME` characters; :data:`DEFAULT_NAME` when nothing is left."""
    text = "".join(
        " " if ch.isspace() else ch
        for ch in (raw or "")[: MAX_NAME * 4]
        if ch.isspace() or not unicodedata.category(ch).startswith("C")
    )
    text = " ".join(text.split())[:MAX_NAME].strip()
    return text or DEFAULT_NAME


class Passkeys:
    """Registration and authentication of passkeys for the portal at ``base_url``.

    ``user_handle`` maps a user id to the WebAuthn user handle of a user's
    first passkey (a keyed digest: stable, and it does not reveal the id);
    later passkeys reuse the handle the first one recorded. ``clock`` gives
    Unix seconds.
    """

    def __init__(
        self,
        store: Store,
        *,
        base_url: str,
        rp_name: str,
        user_handle: Callable[[str], bytes],
        clock: Callable[[], float] = time.time,
        lifetime: float = CHALLENGE_LIFETIME,
    ) -> None:
        host = _host_of(base_url)
        self.store = store
        self.origin = base_url.rstrip("/")
        self.rp_id = host
        self.rp_name = rp_name
        self._user_handle = user_handle
        self._clock = clock
        self._challenges: PendingRequests[Challenge] = PendingRequests(
            store,
            "webauthn",
            encode=Challenge.to_json,
            decode=Challenge.from_json,
            capacity=CHALLENGE_CAPACITY,
            lifetime=lifetime,
            clock=clock,
        )

    # -- reading -------------------------------------------------------------------

    async def passkeys(self, user_id: str) -> list[Passkey]:
        """The user's passkeys, oldest first; records this version cannot read are skipped."""
        found = []
        for record in await self.store.factors(user_id):
            if record.kind != KIND:
                continue
            try:
                found.append(Passkey.of(record))
            except (ValueError, KeyError, TypeError):
                continue
        return found

    # -- registration --------------------------------------------------------------

    async def registration_options(self, user: User, session_id: str) -> tuple[str, dict[str, Any]]:
        """``(handle, options)``: the options for ``navigator.credentials.create()``
        (WebAuthn JSON form), and the handle the answer must come back with."""
        existing = await self.passkeys(user.id)
        if len(existing) >= MAX_PASSKEYS:
            raise PasskeyRefused(TOO_MANY)
        handle = existing[0].user_handle if existing else b64encode(self._user_handle(user.id))
        options = webauthn.generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.rp_name,
            user_id=b64decode(handle),
            user_name=user.username,
            user_display_name=user.display_name
            or " ".join(p for p in (user.given_name, user.family_name) if p)
            or user.username,
            timeout=PROMPT_TIMEOUT_MS,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[_descriptor(p) for p in existing],
        )
        parked = await self._park("register", session_id, user.id, options.challenge)
        return parked, _options_json(options)

    async def register(
        self,
        user: User,
        session_id: str,
        handle: str,
        credential: Mapping[str, Any],
        name: str | None,
        *,
        client: str,
    ) -> Passkey:
        """Check the browser's answer to the registration options and keep the passkey."""
        challenge = await self._take("register", handle, session_id, user.id, client=client)
        try:
            parsed = parse_registration_credential_json(dict(credential))
        except _UNVERIFIABLE as exc:
            raise self._failed(user.id, client, "malformed registration", MALFORMED, exc) from None
        try:
            verified = webauthn.verify_registration_response(
                credential=parsed,
                expected_challenge=b64decode(challenge.challenge),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
            )
        except _UNVERIFIABLE as exc:
            raise self._failed(
                user.id, client, "registration not verified", NOT_VERIFIED, exc
            ) from None
        credential_id = b64encode(verified.credential_id)
        existing = await self.passkeys(user.id)
        if any(p.id == credential_id for p in existing):
            raise PasskeyRefused(ALREADY_REGISTERED)
        if len(existing) >= MAX_PASSKEYS:
            raise PasskeyRefused(TOO_MANY)
        user_handle = existing[0].user_handle if existing else b64encode(self._user_handle(user.id))
        transports = tuple(
            t.value
            for t in (parsed.response.transports or ())
            if isinstance(t, AuthenticatorTransport)
        )
        now = self._clock()
        record = FactorRecord(
            user_id=user.id,
            id=credential_id,
            kind=KIND,
            name=clean_name(name),
            data=passkey_data(
                public_key=verified.credential_public_key,
                sign_count=verified.sign_count,
                transports=transports,
                user_handle=user_handle,
                user_verified=verified.user_verified,
            ),
            created_at=now,
        )
        await self.store.put_factor(record)
        MFA_RESULTS.labels(factor=KIND, result="enrolled").inc()
        audit.info(
            "mfa enrolled", user_id=user.id, factor=KIND, client=client,
            credential=_short(credential_id), user_verified=verified.user_verified,
        )  # fmt: skip
        return Passkey.of(record)

    # -- authentication ------------------------------------------------------------

    async def authentication_options(
        self, user_id: str, session_id: str
    ) -> tuple[str, dict[str, Any]]:
        """``(handle, options)`` for ``navigator.credentials.get()`` with the user's passkeys."""
        existing = await self.passkeys(user_id)
        if not existing:
            raise PasskeyRefused(NONE_REGISTERED)
        options = webauthn.generate_authentication_options(
            rp_id=self.rp_id,
            timeout=PROMPT_TIMEOUT_MS,
            allow_credentials=[_descriptor(p) for p in existing],
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        parked = await self._park("authenticate", session_id, user_id, options.challenge)
        return parked, _options_json(options)

    async def authenticate(
        self,
        user_id: str,
        session_id: str,
        handle: str,
        credential: Mapping[str, Any],
        *,
        client: str,
    ) -> Passkey:
        """Check an assertion: challenge, origin, RP id, signature, owner and counter.

        Returns the passkey as it is after this use (counter and ``used_at``
        updated). The caller then marks the session's second factor done.
        """
        challenge = await self._take("authenticate", handle, session_id, user_id, client=client)
        try:
            parsed = parse_authentication_credential_json(dict(credential))
        except _UNVERIFIABLE as exc:
            raise self._failed(user_id, client, "malformed assertion", MALFORMED, exc) from None
        credential_id = b64encode(parsed.raw_id)
        passkey = next((p for p in await self.passkeys(user_id) if p.id == credential_id), None)
        if passkey is None:
            raise self._failed(user_id, client, "credential of another user or unknown", NOT_YOURS)
        if parsed.response.user_handle is not None and (
            b64encode(parsed.response.user_handle) != passkey.user_handle
        ):
            raise self._failed(user_id, client, "user handle differs", NOT_YOURS)
        try:
            # The counter is compared below, after the signature: only a
            # signed counter is evidence of a copied key.
            verified = webauthn.verify_authentication_response(
                credential=parsed,
                expected_challenge=b64decode(challenge.challenge),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=passkey.public_key,
                credential_current_sign_count=0,
            )
        except _UNVERIFIABLE as exc:
            raise self._failed(
                user_id, client, "assertion not verified", NOT_VERIFIED, exc
            ) from None
        new_count = verified.new_sign_count
        if (new_count or passkey.sign_count) and new_count <= passkey.sign_count:
            MFA_RESULTS.labels(factor=KIND, result="replayed").inc()
            audit.warning(
                "mfa failed", user_id=user_id, factor=KIND, client=client,
                reason="sign counter did not increase: possibly a cloned authenticator",
                credential=_short(passkey.id), stored_count=passkey.sign_count,
                presented_count=new_count,
            )  # fmt: skip
            raise PasskeyRefused(POSSIBLE_CLONE, result="replayed")
        now = self._clock()
        data = passkey_data(
            public_key=passkey.public_key,
            sign_count=new_count,
            transports=passkey.transports,
            user_handle=passkey.user_handle,
            user_verified=passkey.user_verified or verified.user_verified,
        )
        if not await self.store.swap_factor(user_id, passkey.id, passkey.record.data, data, now):
            MFA_RESULTS.labels(factor=KIND, result="replayed").inc()
            audit.warning(
                "mfa failed", user_id=user_id, factor=KIND, client=client,
                reason="passkey used concurrently or changed meanwhile",
                credential=_short(passkey.id),
            )  # fmt: skip
            raise PasskeyRefused(NOT_VERIFIED, result="replayed")
        MFA_RESULTS.labels(factor=KIND, result="success").inc()
        audit.info(
            "mfa used", user_id=user_id, factor=KIND, client=client,
            credential=_short(passkey.id), user_verified=verified.user_verified,
        )  # fmt: skip
        record = FactorRecord(
            user_id=user_id,
            id=passkey.id,
            kind=KIND,
            name=passkey.name,
            data=data,
            created_at=passkey.record.created_at,
            used_at=now,
        )
        return Passkey.of(record)

    # -- management ----------------------------------------------------------------

    async def rename(self, user_id: str, passkey_id: str, name: str | None, *, client: str) -> bool:
        """Give the user's passkey a new name; ``False`` if the user has no such passkey."""
        for passkey in await self.passkeys(user_id):
            if passkey.id == passkey_id:
                # put_factor replaces the whole record: from the data just read,
                # so at worst a use racing this rename loses its counter step.
                record = passkey.record
                await self.store.put_factor(
                    FactorRecord(
                        user_id=record.user_id,
                        id=record.id,
                        kind=record.kind,
                        name=clean_name(name),
                        data=record.data,
                        created_at=record.created_at,
                        used_at=record.used_at,
                    )
                )
                audit.info(
                    "mfa renamed", user_id=user_id, factor=KIND, client=client,
                    credential=_short(passkey_id),
                )  # fmt: skip
                return True
        return False

    # -- challenges ----------------------------------------------------------------

    async def _park(self, ceremony: Ceremony, session_id: str, user_id: str, raw: bytes) -> str:
        try:
            return await self._challenges.park(
                Challenge(ceremony, session_id, user_id, b64encode(raw)), binding=session_id
            )
        except PendingFull:
            raise PasskeyRefused(BUSY, result="throttled", status=503) from None

    async def _take(
        self, ceremony: Ceremony, handle: str, session_id: str, user_id: str, *, client: str
    ) -> Challenge:
        try:
            parked = await self._challenges.take(handle, binding=session_id) if handle else None
        except ParkedElsewhere:
            # Left parked for the session it belongs to.
            raise self._failed(
                user_id, client, "challenge of another session", CHALLENGE_GONE
            ) from None
        if parked is None:
            reason = "challenge unknown, used or expired"
            raise self._failed(user_id, client, reason, CHALLENGE_GONE)
        found = parked.value
        if found.session_id != session_id or found.user_id != user_id:
            raise self._failed(user_id, client, "challenge of another session", CHALLENGE_GONE)
        if found.ceremony != ceremony:
            raise self._failed(user_id, client, f"challenge of a {found.ceremony}", CHALLENGE_GONE)
        return found

    def _failed(
        self,
        user_id: str,
        client: str,
        reason: str,
        message: str,
        exc: Exception | None = None,
    ) -> PasskeyRefused:
        MFA_RESULTS.labels(factor=KIND, result="failure").inc()
        # The library's message says which check failed (origin, RP id hash,
        # challenge ...); it carries no secret.
        detail = {"detail": str(exc)[:200]} if exc is not None else {}
        audit.warning(
            "mfa failed", user_id=user_id, factor=KIND, client=client, reason=reason, **detail
        )
        return PasskeyRefused(message)


def _host_of(base_url: str) -> str:
    host = urlsplit(base_url).hostname
    if not host:
        raise ValueError(f"base URL {base_url!r} has no host")
    return host


def _descriptor(passkey: Passkey) -> PublicKeyCredentialDescriptor:
    transports = []
    for name in passkey.transports:
        try:
            transports.append(AuthenticatorTransport(name))
        except ValueError:
            continue
    return PublicKeyCredentialDescriptor(id=b64decode(passkey.id), transports=transports or None)


def _options_json(options: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(webauthn.options_to_json(options))
    return result


def _short(credential_id: str) -> str:
    """Enough of a credential id to tell passkeys apart in a log."""
    return credential_id[:12]


__all__ = [
    "CHALLENGE_LIFETIME",
    "KIND",
    "Passkey",
    "PasskeyRefused",
    "Passkeys",
    "b64decode",
    "b64encode",
    "clean_name",
]
