"""``provisiond explain``: everything provisiond knows about one user, and why.

For each target: whether the user is in scope and why (the bound groups
that grant it, or none; suspended; removed), what the directory says, what
was last written and when, the pending change (as ``plan`` shows it), the
last error and the next retry, whether the change is held, and whether the
user may sign in to the application now (the rules of the SAML sign-on
endpoint: the public listener, the target's ``sso`` block, an active user
the target's committed desired state grants). Everything comes from the
state store (the last committed snapshot, not a new read of the source),
so it is cheap enough for the admin console, and the same on every replica.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from daemon import holds
from daemon.changes import describe
from daemon.config import Config, TargetSettings
from daemon.diff import diff_object
from daemon.model import Group, User
from daemon.saml.signon import SignOnOptions
from daemon.store import Key, LogEntry, Store, TargetObject


class UnknownUser(LookupError):
    """No user by that username, email or id in the directory or any target."""


@dataclass(frozen=True, slots=True)
class SignOn:
    """What sign-in to one target needs: its SAML endpoint on, and maybe a second factor."""

    enabled: bool
    require_mfa: bool = False


@dataclass(frozen=True, slots=True)
class SignInRules:
    """The sign-in settings ``explain`` judges by (from ``http.public`` and each ``sso``)."""

    public_enabled: bool
    targets: Mapping[str, SignOn] = field(default_factory=dict)


def rules_of(config: Config) -> SignInRules:
    """The sign-in rules a configuration sets."""
    public = config.settings.http.public
    targets: dict[str, SignOn] = {}
    for name, options in config.target_options.items():
        if isinstance(options, SignOnOptions) and options.sso is not None:
            mfa = bool(getattr(options.sso, "require_mfa", False)) or public.require_mfa
            targets[name] = SignOn(bool(options.sso.enabled), mfa)
    return SignInRules(public.enabled, targets)


@dataclass(frozen=True, slots=True)
class TargetExplanation:
    """One target's side of the user (see the module docstring)."""

    target: str
    in_scope: bool
    scope: str
    granting_groups: list[str]
    state: str
    remote_id: str | None
    last_written: dict[str, Any] | None
    last_written_at: float | None
    pending: list[str]
    pending_status: str | None  # "new", "retry" or "held"
    held_reason: str | None
    decision: str | None
    decided_by: str | None
    decided_at: float | None
    last_error: str | None
    attempts: int
    next_retry_at: float | None
    may_sign_in: bool
    sign_in: str
    log: list[LogEntry]


@dataclass(frozen=True, slots=True)
class Explanation:
    """The user as the directory last said (``None``: removed from it) and each target's side."""

    user_id: str
    username: str
    directory: dict[str, Any] | None
    groups: list[str]
    snapshot_version: str | None
    targets: list[TargetExplanation]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = msgspec.to_builtins(self)
        for t, target in zip(doc["targets"], self.targets, strict=True):
            t["log"] = [_entry_json(e) for e in target.log]
        return doc


def _entry_json(e: LogEntry) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(e)
    doc["key"] = f"{e.key[0]}:{e.key[1]}"
    return doc


async def find(store: Store, login: str) -> tuple[str, User | None]:
    """The user id ``login`` names (a username, an email or an id), and its directory record.

    ``None``: no such user in the directory; ``login`` may still be the id of
    a removed user a target knows (:func:`explain` looks).
    """
    login = login.strip()
    if not login:
        raise UnknownUser("no user given")
    user = await store.find_user(login)
    if user is not None:
        return user.id, user
    record = (await store.records([("user", login)])).get(("user", login))
    return login, record if isinstance(record, User) else None


async def explain(
    store: Store,
    login: str,
    targets: Sequence[TargetSettings],
    rules: SignInRules,
    *,
    log_limit: int = 10,
) -> Explanation:
    """Explain one user for each of ``targets``. Raises :class:`UnknownUser`."""
    user_id, user = await find(store, login)
    key: Key = ("user", user_id)
    committed_groups = await store.groups()
    member_of = sorted(g.name for g in committed_groups if user_id in g.members)
    rows = {t.name: await store.target_object(t.name, key) for t in targets}
    gone = user is None and all(r is None for r in rows.values())
    # Removed and delivered everywhere: the provisioning log still knows it.
    if gone and not await store.log_entries(key=key, limit=1):
        raise UnknownUser(
            f"no user {login!r} in the directory (by username, email or id) nor in any target"
        )
    last = user
    for row in rows.values():
        if last is None and row is not None:
            known = row.row.written or row.row.desired
            last = known if isinstance(known, User) else None
    out = [
        await _target(store, t, key, user, rows[t.name], committed_groups, rules, log_limit)
        for t in targets
    ]
    return Explanation(
        user_id,
        last.username if last is not None else user_id,
        None if user is None else msgspec.to_builtins(user),
        member_of,
        await store.get_meta("snapshot_version"),
        out,
    )


async def _target(
    store: Store,
    settings: TargetSettings,
    key: Key,
    user: User | None,
    row: TargetObject | None,
    groups: list[Group],
    rules: SignInRules,
    log_limit: int,
) -> TargetExplanation:
    name = settings.name
    wanted = set(settings.groups)
    bound = [g for g in groups if g.id in wanted or g.name in wanted]
    granting = sorted(g.name for g in bound if key[1] in g.members)
    in_scope = user is not None and user.active and bool(granting)
    if user is None:
        scope = "removed from the directory"
    elif not granting:
        names = ", ".join(sorted(settings.groups)) or "none"
        scope = f"in none of the groups bound to {name} (bound: {names})"
    elif not user.active:
        scope = f"in {', '.join(granting)}, but {user.state} in the directory"
    else:
        scope = f"granted by {', '.join(granting)}"

    hold = await store.hold(name)
    held = hold is not None and key in hold.keys
    held_reason: str | None = None
    decision: str | None = None
    decided_by: str | None = None
    decided_at: float | None = None
    if held:
        [obj] = await holds.held(store, name, [key])
        held_reason, decision = obj.reason, obj.decision
        decided_by, decided_at = obj.actor, obj.decided_at
    else:
        decided = (await store.decisions(name)).get(key)
        if decided is not None:
            decision, decided_by, decided_at = decided.decision, decided.actor, decided.decided_at

    pending: list[str] = []
    status: str | None = None
    if row is not None and row.dirty:
        pending = [describe(c) for c in diff_object(row.row.written, row.row.desired)]
        status = "retry" if row.row.attempts else "new"
    if held:
        pending.append(f"held by the mass-removal guard: {held_reason}")
        status = "held"

    log = await store.log_entries(target=name, key=key, limit=log_limit)
    written_at = next((e.at for e in log if e.outcome == "delivered"), None)
    state = _state(row)
    may, why = await _sign_in(store, name, user, rules)
    return TargetExplanation(
        target=name,
        in_scope=in_scope,
        scope=scope,
        granting_groups=granting,
        state=state,
        remote_id=row.row.remote_id if row is not None else None,
        last_written=(
            msgspec.to_builtins(row.row.written)
            if row is not None and row.row.written is not None
            else None
        ),
        last_written_at=written_at,
        pending=pending,
        pending_status=status,
        held_reason=held_reason,
        decision=decision,
        decided_by=decided_by,
        decided_at=decided_at,
        last_error=row.last_error if row is not None else None,
        attempts=row.row.attempts if row is not None else 0,
        next_retry_at=(
            row.next_attempt_at if row is not None and row.dirty and row.row.attempts else None
        ),
        may_sign_in=may,
        sign_in=why,
        log=log,
    )


def _state(row: TargetObject | None) -> str:
    """What the target should hold for the user now, in words."""
    if row is None:
        return "not provisioned"
    if row.row.desired is None:
        return "to be removed"
    if row.active:
        return "active"
    if row.row.written is None and row.row.remote_id is None:
        return "not provisioned (never active)"
    return "deactivated"


async def _sign_in(
    store: Store, target: str, user: User | None, rules: SignInRules
) -> tuple[bool, str]:
    """Whether the user may sign in to ``target`` now, and why (not)."""
    sign_on = rules.targets.get(target)
    if sign_on is None or not sign_on.enabled:
        return False, f"target {target} has no SAML sign-on (options.sso.enabled)"
    if not rules.public_enabled:
        return False, "the public listener is off (http.public.enabled)"
    if user is None:
        return False, "removed from the directory"
    if not user.active:
        return False, f"{user.state} in the directory"
    if not await store.granted(target, user.id):
        return False, f"not granted {target}: in no bound group as of the last committed cycle"
    if sign_on.require_mfa:
        factors = await store.factors(user.id)
        if not factors:
            return True, "yes, with a second factor (none enrolled yet: it asks for one first)"
        return True, f"yes, with a second factor ({len(factors)} enrolled)"
    return True, "yes"
