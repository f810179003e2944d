"""The admin console on the public listener, under ``/admin``.

Members of the directory group ``http.public.admin_group`` (its name or id)
sign in through the portal's own sign-in (and pass a second factor when
``require_mfa`` or ``admin_require_mfa`` is set); anyone else signed in gets
a plain 403 page, and a browser that is not signed in is sent to sign in and
back. Without ``admin_group`` (or without a daemon behind the listener) every
console URL answers 404.

The pages read what ``provisiond status`` and ``GET /api/v1/status`` show
(:attr:`AdminBackend.overview`, built by the daemon from
:mod:`daemon.status`), and the store the portal already uses. Every action
is a POST carrying the session's CSRF token, and is written to the audit log
(``provisiond.audit``) with the administrator's directory id. A state store
that cannot be reached gets a 503 page that says so; nothing else stops.

Held removals are decided through :class:`HoldDecisions`: the daemon gives
:class:`StoreDecisions`, per object, through :mod:`daemon.holds` (what
``provisiond approve`` and ``reject`` use), recorded as ``admin:<username>``
in the audit and provisioning logs; without it (a listener with no daemon
behind it) only the whole hold can be approved (:class:`WholeHold`). A form
decides only the keys the page showed, and only those still held; a key no
longer held is reported, never acted on. :attr:`AdminBackend.explain` and
:attr:`AdminBackend.user_log` fill the user page's "explain" and
provisioning-log sections (the daemon gives :mod:`daemon.explain` and the
store's provisioning log).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import quote

import structlog
from aiohttp import web
from multidict import MultiDictProxy

from daemon import holds
from daemon.model import Group, User
from daemon.portal.metrics import SAML_CERTIFICATE_EXPIRY
from daemon.portal.mfa.flow import challenge_url, needs_second_factor
from daemon.portal.site import PORTAL, Portal, SignedIn, client_address
from daemon.store import Hold, Key, LogEntry, StateError, Store

audit = structlog.get_logger("provisiond.audit")
log = structlog.get_logger("provisiond.portal.admin")

#: Rows on one page of a long list (held removals, failures, search results).
PAGE_SIZE: Final = 50
#: Users a search reads from the store at most; beyond it the page says to narrow it.
SEARCH_CANDIDATES: Final = 1000
_MAX_QUERY: Final = 200
_MAX_PAGE: Final = 1_000_000
_MAX_KEY: Final = 1024
_DONE: Final = re.compile(r"(approved|rejected|retried)-([0-9]{1,9})(?:-left-([0-9]{1,9}))?")
FORM_EXPIRED: Final = "This form has expired. Go back, reload the page and try again."
STALE_HOLD: Final = (
    "The held removals changed since this page was drawn, so nothing was decided. "
    "Review the list again before you decide."
)
STALE_KEYS: Final = (
    "The held removals changed since this page was drawn: what you chose is no longer "
    "held, so nothing was decided for it. Review the list again before you decide."
)
STORE_DOWN: Final = (
    "The admin console cannot reach the state store right now, so it cannot show or change "
    "anything. provisiond keeps running and retries on its own; try this page again in a minute."
)

#: ``explain(user)``: the document ``provisiond explain --json`` prints for the user.
Explain = Callable[[User], Awaitable[Mapping[str, Any]]]
#: ``user_log(user, before, limit)``: the user's provisioning-log entries, newest first,
#: with an id below ``before`` if given (the next page), at most ``limit``.
UserLog = Callable[[User, int | None, int], Awaitable[Sequence[LogEntry]]]


class StaleHold(Exception):
    """The hold is no longer what the form showed; nothing was decided."""


class HoldDecisions(Protocol):
    """How the console decides held removals.

    ``per_object`` says whether single held objects can be approved and
    rejected; without it only the whole hold can be approved, and only when
    it still holds exactly the keys the page showed. ``actor`` is who
    decides (``admin:<username>``). Both return the keys decided: those of
    ``keys`` still held when the decision is recorded.
    """

    @property
    def per_object(self) -> bool: ...

    async def approve(self, target: str, keys: frozenset[Key], actor: str) -> frozenset[Key]:
        """Release ``keys`` (held now). Raises :class:`StaleHold`."""
        ...

    async def reject(self, target: str, keys: frozenset[Key], actor: str) -> frozenset[Key]:
        """Keep ``keys`` as the target has them and record the decision."""
        ...


class StoreDecisions:
    """:class:`HoldDecisions` one object at a time, as ``provisiond approve`` / ``reject``.

    Through :func:`daemon.holds.approve` and :func:`daemon.holds.reject`: the
    store decides, in one transaction, only the keys held when it runs, and
    writes each decision to the provisioning log with the actor; the audit
    log gets it too. The next cycle plans with it.
    """

    per_object: Final = True

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def approve(self, target: str, keys: frozenset[Key], actor: str) -> frozenset[Key]:
        return frozenset(
            await holds.approve(self._store, target, sorted(keys), actor, self._clock())
        )

    async def reject(self, target: str, keys: frozenset[Key], actor: str) -> frozenset[Key]:
        return frozenset(
            await holds.reject(self._store, target, sorted(keys), actor, self._clock())
        )


class WholeHold:
    """:class:`HoldDecisions` for the whole hold at once (no daemon's decisions given).

    ``approve`` releases the hold only if it holds exactly ``keys``; a hold
    that changed since the page was drawn is left alone (:class:`StaleHold`).
    Rejection is not available.
    """

    per_object: Final = False

    def __init__(self, store: Store) -> None:
        self._store = store

    async def approve(self, target: str, keys: frozenset[Key], actor: str) -> frozenset[Key]:
        # The store checks the keys in its transaction: a cycle that changed the hold
        # since the page was drawn (or since a read here) makes this approve nothing.
        if not await self._store.approve(target, keys):
            raise StaleHold(target)
        return keys

    async def reject(self, target: str, keys: frozenset[Key], actor: str) -> frozenset[Key]:
        raise NotImplementedError("rejecting held removals needs per-object decisions")


@dataclass
class AdminBackend:
    """What the console needs from the running daemon.

    ``overview`` reads the status document now (the same document as
    ``GET /api/v1/status``; it raises :class:`~daemon.store.StateError` when
    the store is down); ``target_names`` lists the configured targets;
    ``trigger_sync`` asks for a cycle after a decision. ``decisions``
    defaults to :class:`WholeHold` over the portal's store (the daemon gives
    :class:`StoreDecisions`); without ``explain`` and ``user_log`` the user
    page says those sections are not available.
    """

    overview: Callable[[], Awaitable[Mapping[str, Any]]]
    target_names: Callable[[], Sequence[str]]
    trigger_sync: Callable[[], None]
    decisions: HoldDecisions | None = None
    explain: Explain | None = None
    user_log: UserLog | None = None
    #: The admin group as last resolved: (snapshot version, reference) -> group.
    _groups: dict[tuple[str | None, str], Group | None] = field(default_factory=dict, repr=False)


ADMIN: Final = web.AppKey("provisiond.admin", AdminBackend)

Page = Callable[[web.Request, Portal, AdminBackend, SignedIn], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- who may use it -----------------------------------------------------------------


async def admin_group(portal: Portal, backend: AdminBackend) -> Group | None:
    """The group ``http.public.admin_group`` names, as of the last committed cycle.

    By id first, then by name; resolved once per snapshot version. A name
    that matches no group, or more than one, grants nobody (and is logged).
    """
    reference = portal.settings.admin_group
    if reference is None:
        return None
    store = portal.directory.store
    version = await store.get_meta("snapshot_version")
    cache_key = (version, reference)
    if cache_key in backend._groups:
        return backend._groups[cache_key]
    found = (await store.records([("group", reference)])).get(("group", reference))
    group = found if isinstance(found, Group) else None
    if group is None:
        keys = [k for k in (await store.committed()).hashes if k[0] == "group"]
        named = [g for g in (await store.records(keys)).values() if isinstance(g, Group)]
        matches = [g for g in named if g.name == reference]
        if len(matches) == 1:
            group = matches[0]
        elif matches:
            log.error(
                "http.public.admin_group names more than one directory group; nobody may use "
                "the admin console until it names one group by its id",
                admin_group=reference, groups=sorted(g.id for g in matches),
            )  # fmt: skip
        else:
            log.warning(
                "http.public.admin_group matches no directory group; nobody may use the "
                "admin console",
                admin_group=reference,
            )
    backend._groups.clear()
    backend._groups[cache_key] = group
    return group


async def is_admin(request: web.Request, user: User) -> bool:
    """Whether ``user`` may use the console (``False`` whenever the console is off)."""
    portal = request.app[PORTAL]
    backend = request.app.get(ADMIN)
    if backend is None or portal.settings.admin_group is None or not user.active:
        return False
    group = await admin_group(portal, backend)
    return group is not None and user.id in group.members


def console_page(page: Page, *, post: bool = False) -> Handler:
    """A console handler: 404 when off, sign-in, second factor, group, CSRF, store errors."""

    async def handler(request: web.Request) -> web.StreamResponse:
        portal = request.app[PORTAL]
        backend = request.app.get(ADMIN)
        if backend is None or portal.settings.admin_group is None:
            raise web.HTTPNotFound()
        try:
            signed_in = await portal.signed_in(request)
            back = request.path_qs if request.method == "GET" else "/admin"
            if signed_in is None:
                raise portal.login_redirect(back)
            settings = portal.settings
            if (settings.require_mfa or settings.admin_require_mfa) and needs_second_factor(
                signed_in.session, since=None
            ):
                raise web.HTTPSeeOther(challenge_url(back))
            if not await is_admin(request, signed_in.user):
                audit.warning(
                    "admin console refused: not a member of the admin group",
                    user_id=signed_in.user.id, path=request.path, client=client_address(request),
                )  # fmt: skip
                return _message(
                    request, portal, signed_in, status=403, title="No access",
                    message="The admin console is for provisiond's administrators. Ask one of "
                    "them if you need access.",
                    console=False,
                )  # fmt: skip
            if post:
                form = await request.post()
                if not portal.key.csrf_ok(signed_in.session.id, _text(form, "csrf", 128)):
                    audit.warning(
                        "admin action refused: missing or wrong CSRF token",
                        user_id=signed_in.user.id, path=request.path,
                        client=client_address(request),
                    )  # fmt: skip
                    return _message(
                        request, portal, signed_in, status=400, title="Form expired",
                        message=FORM_EXPIRED,
                    )  # fmt: skip
            return await page(request, portal, backend, signed_in)
        except StateError as exc:
            log.error("admin console: state store unreachable", path=request.path, error=str(exc))
            response = portal.render(
                request, "admin_message.html", status=503, title="State store unreachable",
                message=STORE_DOWN, signed_in=None, csrf="", nav=None, link=None, items=[],
            )  # fmt: skip
            response.headers["Retry-After"] = "30"
            return response

    return handler


# -- pages ---------------------------------------------------------------------------


async def overview(
    request: web.Request, portal: Portal, backend: AdminBackend, signed_in: SignedIn
) -> web.StreamResponse:
    """GET /admin: every target's health and counts, the last cycle, the source."""
    doc = await backend.overview()
    certificates = _certificate_expiry()
    now = portal.clock()
    targets = []
    for name, fields in sorted((doc.get("targets") or {}).items()):
        seconds = certificates.get(name)
        targets.append(
            {
                "name": name,
                "fields": fields,
                "health": _health(fields),
                "cert_days": None if seconds is None else math.floor(seconds / 86400),
                "quarantined_until": _when(fields.get("quarantined_until")),
                "hold_since": _when(fields.get("hold_since")),
            }
        )
    last = doc.get("last_cycle")
    return _render(
        request, portal, signed_in, "admin_overview.html", "overview",
        doc=doc, targets=targets, last=last,
        last_started=_when(last.get("started_at")) if last else None,
        snapshot_at=_when(_float(doc.get("snapshot_committed_at"))),
        updated_at=_when(now),
    )  # fmt: skip


async def held(
    request: web.Request, portal: Portal, backend: AdminBackend, signed_in: SignedIn
) -> web.StreamResponse:
    """GET /admin/held: each target's held removals, paged, with the decisions."""
    store = portal.directory.store
    names = list(backend.target_names())
    chosen = _choose(request.query.get("target"), names)
    page = _page(request.query.get("page"))
    hold = await store.hold(chosen) if chosen else None
    keys = sorted(hold.keys) if hold else []
    shown, pages = _slice(keys, page)
    page = min(page, pages)
    rows = []
    if shown and chosen:
        records = await store.records(shown)
        described = {o.key: o for o in await holds.held(store, chosen, shown)}
        for key in shown:
            row = _object_row(key, records.get(key))
            obj = described.get(key)
            row["reason"] = obj.reason if obj else ""
            row["decision"] = obj.decision if obj else None
            row["actor"] = obj.actor if obj else None
            row["decided_at"] = _when(obj.decided_at) if obj else None
            rows.append(row)
    counts = {name: _held_count(await store.hold(name)) for name in names}
    return _render(
        request, portal, signed_in, "admin_held.html", "held",
        names=names, target=chosen, counts=counts, hold=hold, rows=rows,
        digest=_hold_digest(chosen, hold) if hold else "", total=len(keys),
        page=page, pages=pages, per_object=_decisions(portal, backend).per_object,
        since=_when(hold.created_at) if hold else None, done=_done(request),
    )  # fmt: skip


async def held_decide(
    request: web.Request, portal: Portal, backend: AdminBackend, signed_in: SignedIn
) -> web.StreamResponse:
    """POST /admin/held: approve or reject the whole hold, or the held objects the page showed.

    The form carries either the digest of the whole hold the page showed
    (the "all" buttons: a hold that changed since is left alone, 409) or
    one or more keys (per object: only those still held are decided; the
    others are reported, 409 when none is left).
    """
    form = await request.post()
    store = portal.directory.store
    names = list(backend.target_names())
    target = _text(form, "target", 256)
    if target not in names:
        return _message(
            request, portal, signed_in, status=404, title="No such target",
            message="No target of that name is configured.",
        )  # fmt: skip
    action = _text(form, "action", 16)
    decisions = _decisions(portal, backend)
    if action not in ("approve", "reject") or (action == "reject" and not decisions.per_object):
        return _message(
            request, portal, signed_in, status=400, title="Unknown action",
            message="That is not something the console can do with held removals.",
        )  # fmt: skip
    raw = [v for v in form.getall("key", []) if isinstance(v, str)]
    hold = await store.hold(target)
    held_now = hold.keys if hold is not None else frozenset()
    left: frozenset[Key] = frozenset()
    if not raw:
        if hold is None or _text(form, "digest", 128) != _hold_digest(target, hold):
            return _stale(request, portal, signed_in, target, action, [])
        keys = hold.keys
    else:
        if not decisions.per_object:
            return _message(
                request, portal, signed_in, status=400, title="Not available",
                message="Held removals can only be approved all at once here.",
            )  # fmt: skip
        asked = [_key(v[:_MAX_KEY]) for v in raw[:PAGE_SIZE]]
        if None in asked or len(raw) > PAGE_SIZE:
            return _message(
                request, portal, signed_in, status=400, title="Not a held removal",
                message="The form named something that is not a user or group key.",
            )  # fmt: skip
        wanted = frozenset(k for k in asked if k is not None)
        keys, left = wanted & held_now, wanted - held_now
        if not keys:
            return _stale(request, portal, signed_in, target, action, sorted(left))
    actor = f"admin:{signed_in.user.username}"
    try:
        if action == "approve":
            decided = await decisions.approve(target, keys, actor)
        else:
            decided = await decisions.reject(target, keys, actor)
    except StaleHold:
        return _stale(request, portal, signed_in, target, action, sorted(keys))
    # Keys that left the hold between the read above and the store's transaction.
    left |= keys - decided
    if not decided:
        return _stale(request, portal, signed_in, target, action, sorted(left))
    done = "approved" if action == "approve" else "rejected"
    audit.info(
        f"held removals {done} in the admin console",
        target=target, objects=len(decided),
        keys=[_key_text(k) for k in sorted(decided)][:PAGE_SIZE], actor=actor,
        user_id=signed_in.user.id, client=client_address(request),
    )  # fmt: skip
    if left:
        audit.warning(
            "admin decision on held removals: keys no longer held were left alone",
            target=target, action=action, keys=[_key_text(k) for k in sorted(left)],
            user_id=signed_in.user.id, client=client_address(request),
        )  # fmt: skip
    backend.trigger_sync()
    more = f"-left-{len(left)}" if left else ""
    raise web.HTTPSeeOther(f"/admin/held?target={_q(target)}&done={done}-{len(decided)}{more}")


async def failures(
    request: web.Request, portal: Portal, backend: AdminBackend, signed_in: SignedIn
) -> web.StreamResponse:
    """GET /admin/failures: objects whose delivery failed, paged, with "retry now"."""
    store = portal.directory.store
    names = list(backend.target_names())
    chosen = _choose(request.query.get("target"), names)
    page = _page(request.query.get("page"))
    counts = {name: (await store.counts(name))[1] for name in names}
    total = counts.get(chosen, 0) if chosen else 0
    page = min(page, _pages(total))
    # problems() pages by limit only: read up to this page's end, one more to know of a next.
    problems = await store.problems(chosen, page * PAGE_SIZE + 1) if chosen else []
    shown = problems[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    records = await store.records([p.key for p in shown]) if shown else {}
    now = portal.clock()
    rows = [
        {
            **_object_row(p.key, records.get(p.key)),
            "attempts": p.attempts,
            "error": p.last_error or "",
            "next": "now" if p.next_attempt_at <= now else _when(p.next_attempt_at),
        }
        for p in shown
    ]
    return _render(
        request, portal, signed_in, "admin_failures.html", "failures",
        names=names, target=chosen, counts=counts, rows=rows, total=total, page=page,
        pages=_pages(total), done=_done(request),
    )  # fmt: skip


async def failures_retry(
    request: web.Request, portal: Portal, backend: AdminBackend, signed_in: SignedIn
) -> web.StreamResponse:
    """POST /admin/failures: retry one object, or every object the page showed, now."""
    form = await request.post()
    names = list(backend.target_names())
    target = _text(form, "target", 256)
    if target not in names:
        return _message(
            request, portal, signed_in, status=404, title="No such target",
            message="No target of that name is configured.",
        )  # fmt: skip
    raw = [v for v in form.getall("key", []) if isinstance(v, str)][:PAGE_SIZE]
    keys = [k for k in (_key(v[:_MAX_KEY]) for v in raw) if k is not None]
    if not keys:
        return _message(
            request, portal, signed_in, status=400, title="Nothing to retry",
            message="The form named no object to retry.",
        )  # fmt: skip
    n = await portal.directory.store.retry_now(target, keys, portal.clock())
    audit.info(
        "failed deliveries retried now from the admin console",
        target=target, objects=n, keys=[_key_text(k) for k in keys],
        user_id=signed_in.user.id, client=client_address(request),
    )  # fmt: skip
    backend.trigger_sync()
    raise web.HTTPSeeOther(f"/admin/failures?target={_q(target)}&done=retried-{n}")


async def users(
    request: web.Request, portal: Portal, backend: AdminBackend, signed_in: SignedIn
) -> web.StreamResponse:
    """GET /admin/users: search by username, email or name, paged."""
    query = request.query.get("q", "")[:_MAX_QUERY].strip()
    page = _page(request.query.get("page"))
    found: list[User] = []
    capped = False
    if query:
        # The store narrows by the longest word ("Maria Berg": "maria"); names are matched here.
        word = max(query.split(), key=len)
        candidates = await portal.directory.store.search_users(word, SEARCH_CANDIDATES)
        capped = len(candidates) >= SEARCH_CANDIDATES
        found = [u for u in candidates if _matches(u, query)]
    shown, pages = _slice(found, page)
    page = min(page, pages)
    return _render(
        request, portal, signed_in, "admin_users.html", "users",
        query=query, users=shown, total=len(found), page=page, pages=pages, capped=capped,
        limit=SEARCH_CANDIDATES,
    )  # fmt: skip


async def user(
    request: web.Request, portal: Portal, backend: AdminBackend, signed_in: SignedIn
) -> web.StreamResponse:
    """GET /admin/users/{id}: what the directory and the store say about one user."""
    user_id = request.match_info["id"]
    store = portal.directory.store
    record = (await store.records([("user", user_id)])).get(("user", user_id))
    if not isinstance(record, User):
        return _message(
            request, portal, signed_in, status=404, title="No such user",
            message="The directory, as of the last cycle, has no user with that id.",
        )  # fmt: skip
    key: Key = ("user", user_id)
    per_target = []
    for name in backend.target_names():
        row = (await store.rows(name, [key])).get(key)
        hold = await store.hold(name)
        per_target.append(
            {
                "name": name,
                "granted": await store.granted(name, user_id),
                "known": row is not None,
                "remote_id": row.remote_id if row else None,
                "attempts": row.attempts if row else 0,
                "removal": row is not None and row.desired_hash is None,
                "held": hold is not None and key in hold.keys,
            }
        )
    explained = _explained(await backend.explain(record)) if backend.explain else None
    entries = None
    older = None
    if backend.user_log is not None:
        before = _before(request.query.get("before"))
        found = list(await backend.user_log(record, before, PAGE_SIZE + 1))
        entries = [_log_row(e) for e in found[:PAGE_SIZE]]
        last_id = found[PAGE_SIZE - 1].id if len(found) > PAGE_SIZE else None
        older = f"?before={last_id}#provisioning-log" if last_id is not None else None
    fields = [(name, value) for name, value in _user_fields(record) if value not in (None, "")]
    return _render(
        request, portal, signed_in, "admin_user.html", "users",
        person=record, fields=fields, per_target=per_target, explained=explained,
        entries=entries, older=older, newest="before" in request.query,
    )  # fmt: skip


def routes() -> list[web.RouteDef]:
    """The console's routes (404 while ``http.public.admin_group`` is unset)."""
    return [
        web.get("/admin", console_page(overview)),
        web.get("/admin/held", console_page(held)),
        web.post("/admin/held", console_page(held_decide, post=True)),
        web.get("/admin/failures", console_page(failures)),
        web.post("/admin/failures", console_page(failures_retry, post=True)),
        web.get("/admin/users", console_page(users)),
        web.get("/admin/users/{id}", console_page(user)),
    ]


# -- helpers -------------------------------------------------------------------------


def _render(
    request: web.Request,
    portal: Portal,
    signed_in: SignedIn,
    template: str,
    nav: str,
    **context: Any,
) -> web.Response:
    return portal.render(
        request, template, signed_in=signed_in, csrf=portal.csrf_token(signed_in.session.id),
        nav=nav, **context,
    )  # fmt: skip


def _message(
    request: web.Request,
    portal: Portal,
    signed_in: SignedIn,
    *,
    status: int,
    title: str,
    message: str,
    console: bool = True,
    link: tuple[str, str] | None = None,
    items: Sequence[str] = (),
) -> web.Response:
    return portal.render(
        request, "admin_message.html", status=status, title=title, message=message,
        signed_in=signed_in, csrf=portal.csrf_token(signed_in.session.id),
        nav="" if console else None, link=link, items=list(items),
    )  # fmt: skip


def _stale(
    request: web.Request,
    portal: Portal,
    signed_in: SignedIn,
    target: str,
    action: str,
    keys: Iterable[Key],
) -> web.Response:
    refs = [_key_text(k) for k in keys]
    audit.warning(
        "admin decision on held removals refused: the hold changed since the page was drawn",
        target=target, action=action, keys=refs,
        user_id=signed_in.user.id, client=client_address(request),
    )  # fmt: skip
    return _message(
        request, portal, signed_in, status=409, title="The list changed",
        message=STALE_KEYS if refs else STALE_HOLD, items=refs,
        link=(f"/admin/held?target={_q(target)}", "Review the held removals again"),
    )  # fmt: skip


def _decisions(portal: Portal, backend: AdminBackend) -> HoldDecisions:
    return backend.decisions or WholeHold(portal.directory.store)


def _text(form: MultiDictProxy[Any], name: str, limit: int) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def _done(request: web.Request) -> dict[str, Any] | None:
    """The notice after a decision (``approved-3``: "approved 3"; ``-left-1``: one key the
    page showed was no longer held); anything else shows none, so a crafted link cannot
    put its own words on the page."""
    match = _DONE.fullmatch(request.query.get("done", ""))
    if not match:
        return None
    return {"text": f"{match[1]} {match[2]}", "action": match[1], "left": int(match[3] or 0)}


def _before(raw: str | None) -> int | None:
    """A provisioning-log page's ``before`` id from the query; ``None`` for the newest page."""
    try:
        value = int(raw or "")
    except ValueError:
        return None
    return value if 0 < value < 2**62 else None


def _page(raw: str | None) -> int:
    """A page number from the query: 1 for anything that is not a positive number."""
    try:
        return max(1, min(int(raw or "1"), _MAX_PAGE))
    except ValueError:
        return 1


def _pages(total: int) -> int:
    return max(1, math.ceil(total / PAGE_SIZE))


def _slice(items: Sequence[Any], page: int) -> tuple[list[Any], int]:
    """The items on ``page`` (1-based; past the end: the last page), and the page count."""
    start = (min(page, _pages(len(items))) - 1) * PAGE_SIZE
    return list(items[start : start + PAGE_SIZE]), _pages(len(items))


def _choose(raw: str | None, names: Sequence[str]) -> str | None:
    if raw in names:
        return raw
    return names[0] if names else None


def _key(text: str) -> Key | None:
    """``user:ID`` or ``group:ID`` from a form, else ``None``."""
    kind, sep, object_id = text.partition(":")
    if not sep or not object_id or kind not in ("user", "group"):
        return None
    return (kind, object_id)  # type: ignore[return-value]


def _key_text(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


def _q(value: str) -> str:
    return quote(value, safe="")


def _hold_digest(target: str | None, hold: Hold) -> str:
    """What identifies the hold a page showed: its target and every key it held."""
    text = "\n".join([target or "", *(_key_text(k) for k in sorted(hold.keys))])
    return hashlib.sha256(text.encode()).hexdigest()


def _held_count(hold: Hold | None) -> int:
    return len(hold.keys) if hold else 0


def _object_row(key: Key, record: object) -> dict[str, Any]:
    """One object as the lists show it: its key, and a user's or group's names."""
    row: dict[str, Any] = {"key": _key_text(key), "kind": key[0], "id": key[1], "name": "",
                           "detail": ""}  # fmt: skip
    if isinstance(record, User):
        row["name"] = _full_name(record)
        row["detail"] = f"{record.username} · {record.email}"
    elif isinstance(record, Group):
        row["name"] = record.name
        row["detail"] = f"{len(record.members)} members"
    return row


def _full_name(user: User) -> str:
    return (
        user.display_name or " ".join(p for p in (user.given_name, user.family_name) if p)
        or user.username
    )  # fmt: skip


def _matches(user: User, query: str) -> bool:
    """Whether the search ``query`` is in the user's username, email or a name."""
    folded = query.casefold()
    names = (user.username, user.email, user.given_name, user.family_name,
             user.display_name or "", f"{user.given_name} {user.family_name}")  # fmt: skip
    return any(folded in n.casefold() for n in names)


def _explained(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``provisiond explain``'s document as the user page shows it, one target at a time."""
    targets = []
    for t in doc.get("targets") or []:
        fields: list[tuple[str, Any]] = [
            ("In scope", f"{'yes' if t.get('in_scope') else 'no'}: {t.get('scope', '')}"),
            ("At the target", t.get("state", "")),
        ]
        if t.get("remote_id"):
            fields.append(("Remote id", t["remote_id"]))
        fields.append(("Last written", _when(t.get("last_written_at")) or "not recorded"))
        pending = "; ".join(t.get("pending") or [])
        status = t.get("pending_status")
        if pending and status:
            pending = f"({status}) {pending}"
        fields.append(("Pending change", pending or "none"))
        if t.get("decision"):
            by = f" by {t['decided_by']}" if t.get("decided_by") else ""
            at = _when(t.get("decided_at"))
            fields.append(("Operator's decision", t["decision"] + by + (f" on {at}" if at else "")))
        if t.get("last_error"):
            fields.append(("Last error", f"{t['last_error']} (attempts: {t.get('attempts', 0)})"))
        if t.get("next_retry_at"):
            fields.append(("Next retry", _when(t["next_retry_at"])))
        may = bool(t.get("may_sign_in"))
        fields.append(("May sign in", t.get("sign_in", "") if may else f"no: {t.get('sign_in')}"))
        targets.append(
            {
                "name": t.get("target", ""),
                "fields": fields,
                "in_scope": bool(t.get("in_scope")),
                "may_sign_in": may,
            }
        )
    groups = doc.get("groups") or []
    return {
        "groups": ", ".join(groups) if groups else "none",
        "snapshot": doc.get("snapshot_version"),
        "targets": targets,
    }


def _log_row(entry: LogEntry) -> dict[str, Any]:
    """One provisioning-log entry as the user page's table shows it."""
    request = ""
    if entry.method:
        request = f"{entry.method} {entry.path or ''} → {entry.status or 'no answer'}"
    return {
        "when": _when(entry.at),
        "target": entry.target,
        "outcome": entry.outcome,
        "changes": ", ".join(entry.changes),
        "attributes": ", ".join(entry.attributes),
        "request": request,
        "error": entry.error or "",
        "by": entry.actor or "provisiond",
    }


def _user_fields(user: User) -> list[tuple[str, Any]]:
    return [(name, getattr(user, name)) for name in user.__struct_fields__]


def _health(fields: Mapping[str, Any]) -> str:
    """One word for a target's row: what needs a look first."""
    if fields.get("quarantined"):
        return "quarantined"
    if fields.get("auth_ok") is False:
        return "token refused"
    if fields.get("held_removals"):
        return "removals held"
    if fields.get("failed"):
        return "failures"
    return "ok"


def _certificate_expiry() -> dict[str, float]:
    """Seconds until each application's SAML signing certificate expires, by target."""
    out: dict[str, float] = {}
    for metric in SAML_CERTIFICATE_EXPIRY.collect():
        for sample in metric.samples:
            out[sample.labels.get("application", "")] = sample.value
    return out


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _when(seconds: object) -> str | None:
    """Unix seconds as UTC text, or ``None``."""
    value = _float(seconds)
    if not value:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
