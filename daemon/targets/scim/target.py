"""The generic SCIM 2.0 target: provisioning of users and groups into any SCIM application.

One :class:`ScimTarget` per configured target, each with its own SCIM client
(one pooled session, its own rate limiter), token file, links and health, so
a production and a sandbox target run side by side and one failing never
slows the other. An application supplies a :class:`ScimProfile` (its name
and wording) and a user mapping (:class:`~daemon.targets.scim.schema.UserSchema`);
everything else is here.

Delivery takes the core's deltas phase by phase (users, groups, group
removals, user removals), each phase concurrently up to ``max_concurrency``
requests in flight. Every delta gets exactly one :class:`Outcome`; a failure
carries the server's reason and, when known, how long to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from pydantic import ValidationError

from daemon.runtime import PluginContext
from daemon.scim import (
    AdaptiveRateLimiter,
    Capabilities,
    RetryPolicy,
    ScimAuthError,
    ScimClient,
    ScimError,
    ScimNotLeaderError,
    ScimPermanentError,
    Timeouts,
)
from daemon.scim.events import trace_requests
from daemon.store import Store
from daemon.targets.base import Delta, Outcome
from daemon.targets.scim import metrics
from daemon.targets.scim.groups import remove_group, upsert_group
from daemon.targets.scim.health import Health
from daemon.targets.scim.links import Links
from daemon.targets.scim.options import ScimOptions
from daemon.targets.scim.profile import ScimProfile
from daemon.targets.scim.reconcile import reconcile
from daemon.targets.scim.remote import Link, RemoteIndex
from daemon.targets.scim.schema import UserSchema
from daemon.targets.scim.users import remove_user, upsert_user

Handler = Callable[[Link, Delta], Awaitable[Outcome]]

#: The target's meta key for the time of the last reconciliation.
LAST_RECONCILE = "last_reconcile"

@dataclass
class _Round:
    calls: int = 0
    transient: int = 0


def _schema_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    return f"the directory record cannot be sent as a SCIM user: {shown}"


class ScimTarget:
    """Provisions one SCIM application (see the module docstring)."""

    def __init__(
        self,
        name: str,
        scim: ScimOptions,
        context: PluginContext,
        *,
        profile: ScimProfile,
        schema: UserSchema,
        base_url: str,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        self.kind = profile.kind
        self.scim = scim
        self.profile = profile
        self.context = context
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics.for_prefix(
            profile.metric_prefix, profile.metric_app or profile.app
        )
        self.token = context.secret_file(scim.token_file)
        ca_file: Path | None = None
        if scim.ca_bundle is not None:
            ca_file = (
                scim.ca_bundle
                if scim.ca_bundle.is_absolute()
                else context.config_dir / scim.ca_bundle
            )
        self.client = ScimClient(
            self.base_url,
            self.token.value,
            ca_file=ca_file,
            timeouts=Timeouts(total=scim.timeout, connect=min(10.0, scim.timeout)),
            max_concurrency=scim.max_concurrency,
            retry=retry or RetryPolicy(),
            rate_limiter=AdaptiveRateLimiter(
                max_rate=scim.rate_limit,
                min_rate=min(0.2, scim.rate_limit),
                burst=float(max(5, scim.max_concurrency)),
            ),
            observer=metrics.observer(name),
        )
        legacy = profile.legacy_state_file
        links = Links(
            name, legacy_file=context.state_dir / legacy.format(name=name) if legacy else None
        )
        self.link = Link(
            name, scim, self.client, schema, links, profile, self.metrics, clock=clock
        )
        self.health = Health(
            name,
            self.metrics,
            profile.access_revoked,
            app=profile.app,
            after=scim.quarantine_after,
            base=scim.quarantine_base,
            ceiling=scim.quarantine_max,
            auth_wait=scim.auth_retry_after,
            clock=clock,
        )
        self.clock = clock
        self.log = structlog.get_logger(f"provisiond.target.{profile.kind}").bind(target=name)
        #: When reconciliation last ran (kept in the store, so restarts and
        #: ``sync --once`` runs do not reset the timer); ``None`` until started.
        self.last_reconcile: float | None = None
        self._store: Store | None = None
        self._discovered = False
        #: Set by :meth:`aclose`: periodic work that comes later does nothing.
        self._closed = False

    async def start(self, store: Store) -> None:
        """Load what this target remembers from ``store`` (before delivering).

        The core starts a target again when this replica becomes its leader
        anew (leader election): another replica may have written meanwhile, so
        everything is read again, and the listing of remote users is dropped.
        """
        again = self._store is not None
        async with self.link.busy:
            await self.link.links.load(store)
            if again:
                self.link.index = RemoteIndex()
        self._store = store
        stored = await store.target_meta(self.name, LAST_RECONCILE)
        if stored is None:
            # The first start begins the period; the first pass is one period later.
            self.last_reconcile = self.clock()
            await store.set_target_meta(self.name, LAST_RECONCILE, repr(self.last_reconcile))
        else:
            self.last_reconcile = float(stored)

    # -- delivery ----------------------------------------------------------------

    async def deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        """One :class:`Outcome` per delta, in order (see the module docstring)."""
        async with self.link.busy:
            return await self._deliver(deltas)

    async def _deliver(self, deltas: Sequence[Delta]) -> list[Outcome]:
        blocked = self.health.blocked(self.token.changed)
        if blocked is not None:
            reason, wait = blocked
            return [Outcome.failure(d, reason, retry_after=wait) for d in deltas]
        outcomes: dict[tuple[str, str], Outcome] = {}
        stats = _Round()
        try:
            await self._ready()
        except ScimError as exc:
            transient = exc.transient or exc.status is None
            stats.calls = 1
            stats.transient = int(transient and not isinstance(exc, ScimNotLeaderError))
            for delta in deltas:
                outcomes[delta.key] = await self._failure(delta, exc, retry=None)
        else:
            try:
                await self._deliver_phases(deltas, outcomes, stats)
            finally:
                # What was written is kept even when a phase raised (the engine then
                # retries the whole batch, and the links make that harmless).
                await self.link.links.flush()
        if self.health.end_round(stats.calls, stats.transient):
            self.log.error(
                f"target quarantined: most {self.profile.app} calls failed in consecutive rounds",
                until=self.health.quarantined_until,
                bad_rounds=self.health.bad_rounds,
            )
        return [outcomes[d.key] for d in deltas]

    async def _deliver_phases(
        self,
        deltas: Sequence[Delta],
        outcomes: dict[tuple[str, str], Outcome],
        stats: _Round,
    ) -> None:
        users = [d for d in deltas if d.kind == "user" and d.desired is not None]
        groups = [d for d in deltas if d.kind == "group" and d.desired is not None]
        group_removals = [d for d in deltas if d.kind == "group" and d.desired is None]
        user_removals = [d for d in deltas if d.kind == "user" and d.desired is None]
        if not self.scim.manage_groups:
            for delta in groups + group_removals:
                outcomes[delta.key] = Outcome.success(delta)
            groups, group_removals = [], []
        unmatched = sum(
            1 for d in users if not (d.remote_id or self.link.links.get("user", d.object_id))
        )
        try:
            await self.link.prepare_matching(unmatched)
        except ScimError as exc:
            self.log.warning(f"listing {self.profile.app} users failed", error=str(exc))
        handlers: list[tuple[list[Delta], Handler]] = [
            (users, upsert_user),
            (groups, upsert_group),
            (group_removals, remove_group),
            (user_removals, remove_user),
        ]
        for phase, handler in handlers:
            if phase:
                await self._run_phase(phase, handler, outcomes, stats)

    async def _run_phase(
        self,
        phase: list[Delta],
        handler: Handler,
        outcomes: dict[tuple[str, str], Outcome],
        stats: _Round,
    ) -> None:
        # No more deltas in progress than connection slots. Retry-After needs no such
        # bound (the transport holds queued requests through a pause), but each delta
        # checks the target's health as it starts: after a 401 or a quarantine the
        # rest of the batch stops at once, instead of a whole batch of queued
        # requests meeting the same refusal.
        limit = anyio.Semaphore(self.scim.max_concurrency)

        async def one(delta: Delta) -> None:
            async with limit:
                outcomes[delta.key] = await self._one(delta, handler, stats)

        async with anyio.create_task_group() as tg:
            for delta in phase:
                tg.start_soon(one, delta)

    async def _one(self, delta: Delta, handler: Handler, stats: _Round) -> Outcome:
        # The requests made for this object go into its outcome, for the provisioning log.
        with trace_requests() as requests:
            outcome = await self._one_traced(delta, handler, stats)
        return dataclasses.replace(outcome, requests=tuple(requests)) if requests else outcome

    async def _one_traced(self, delta: Delta, handler: Handler, stats: _Round) -> Outcome:
        blocked = self.health.blocked(self.token.changed)
        if blocked is not None:
            return Outcome.failure(delta, blocked[0], retry_after=blocked[1])
        used = self._token_now()
        stats.calls += 1
        try:
            return await handler(self.link, delta)
        except ScimAuthError as exc:
            if await self._rotated_since(used):
                try:
                    return await handler(self.link, delta)
                except Exception as again:
                    return await self._failure(delta, again, retry=None, stats=stats)
            return await self._failure(delta, exc, retry=None, stats=stats)
        except Exception as exc:
            return await self._failure(delta, exc, retry=None, stats=stats)

    async def _failure(
        self,
        delta: Delta,
        exc: BaseException,
        *,
        retry: float | None,
        stats: _Round | None = None,
    ) -> Outcome:
        kind = f"{delta.kind}_{'remove' if delta.desired is None else 'upsert'}"
        if isinstance(exc, ScimAuthError):
            if not self.health.blocked(self.token.changed):
                self.health.auth_refused()
                self.log.error(self.profile.access_revoked, server_said=exc.detail)
            self.metrics.operation(self.name, kind, "auth")
            return Outcome.failure(
                delta, self.profile.access_revoked, retry_after=self.health.auth_wait
            )
        if isinstance(exc, ScimPermanentError):
            self.metrics.operation(self.name, kind, "permanent")
            return Outcome.failure(delta, str(exc), permanent=True)
        if isinstance(exc, ScimNotLeaderError):
            # Not sent, and no fault of the application's: it counts for no quarantine.
            return Outcome.failure(delta, str(exc))
        if isinstance(exc, ScimError):
            if stats is not None and (exc.transient or exc.status is None):
                stats.transient += 1
            self.metrics.operation(self.name, kind, "failed")
            return Outcome.failure(delta, str(exc), retry_after=exc.retry_after or retry)
        if isinstance(exc, ValidationError):
            self.metrics.operation(self.name, kind, "permanent")
            return Outcome.failure(delta, _schema_summary(exc), permanent=True)
        if isinstance(exc, ValueError):
            self.metrics.operation(self.name, kind, "permanent")
            return Outcome.failure(delta, f"cannot be sent: {exc}", permanent=True)
        self.log.error(
            f"unexpected error delivering to {self.profile.app}",
            object=f"{delta.kind}:{delta.object_id}",
            error=f"{type(exc).__name__}: {exc}",
        )
        if stats is not None:
            stats.transient += 1
        self.metrics.operation(self.name, kind, "failed")
        return Outcome.failure(delta, f"unexpected error: {type(exc).__name__}: {exc}")

    def _token_now(self) -> str | None:
        try:
            return self.token.value()
        except Exception:
            return None

    async def _rotated_since(self, used: str | None) -> bool:
        """Whether the token file holds a new token now, or within ``token_rotation_wait``."""
        deadline = self.clock() + self.scim.token_rotation_wait
        while True:
            if self._token_now() != used:
                self.health.auth_ok()
                return True
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _ready(self) -> Capabilities:
        if not self._discovered or self.client.capabilities is None:
            capabilities = await self.client.discover()
            self._discovered = True
            self.log.info(
                f"{self.profile.app} SCIM service discovered",
                patch=capabilities.patch,
                filter=capabilities.filter,
                bulk=capabilities.bulk,
                max_operations=capabilities.bulk_max_operations,
            )
        assert self.client.capabilities is not None
        return self.client.capabilities

    # -- reconciliation ----------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """One full pass over the application now; returns the repairs by kind.

        Deliveries go on meanwhile: the pass takes the target's lock one object
        at a time (:func:`daemon.targets.scim.reconcile.reconcile`), so a long
        drift check holds up this target's cycle by one repair at most.
        """
        if self._closed:
            return {}
        self.last_reconcile = self.clock()
        if self._store is not None:
            await self._store.set_target_meta(self.name, LAST_RECONCILE, repr(self.last_reconcile))
        try:
            released: list[tuple[str, str]] = []
            if self.link.links.loaded:
                async with self.link.busy:
                    released = await self.link.links.prune()
            if released:
                self.log.info("stopped managing objects released elsewhere", objects=len(released))
            await self._ready()
            repaired = await reconcile(self.link)
        except ScimError as exc:
            self.metrics.reconciliations.labels(self.name, "failed").inc()
            self.log.warning("reconciliation failed; trying again next pass", error=str(exc))
            raise
        self.metrics.reconciliations.labels(self.name, "ok").inc()
        self.log.info("reconciliation finished", repaired=dict(repaired))
        return dict(repaired)

    async def reconcile_if_due(self) -> None:
        """Run :meth:`reconcile` when ``reconcile_every`` has passed (and the target is usable)."""
        if self.last_reconcile is None:
            return  # not started: nothing delivered yet in this process
        if self.clock() - self.last_reconcile < self.scim.reconcile_every:
            return
        if self.health.blocked(self.token.changed) is not None:
            return
        with contextlib.suppress(ScimError):
            await self.reconcile()

    # -- check and close ---------------------------------------------------------

    async def check(self, write_test: bool = False) -> list[str]:
        """Discovery, auth, one read; with ``write_test`` create, deactivate, delete a user."""
        url = self.base_url
        try:
            capabilities = await self.client.discover()
        except ScimAuthError as exc:
            raise RuntimeError(f"{self.profile.access_revoked} ({exc.detail})") from None
        except ScimError as exc:
            raise RuntimeError(
                f"SCIM discovery at {url}/ServiceProviderConfig failed: {exc}. "
                f"{self.profile.discovery_hint}"
            ) from None
        self._discovered = True
        page = await self.client.query(self.link.schema.model, count=1)
        chunk = capabilities.bulk_max_operations
        lines = [
            f"{self.kind} {self.name}: {url} answers; token accepted; "
            f"{page.total_results or 0} user(s) visible",
            f"{self.kind} {self.name}: PATCH {_yes(capabilities.patch)}, filter "
            f"{_yes(capabilities.filter)}, bulk {_yes(capabilities.bulk)}, maxOperations "
            f"{chunk if chunk is not None else 'not given'} (membership chunk "
            f"{self.link.chunk})",
        ]
        if write_test:
            lines.append(await self._write_test())
        return lines

    async def _write_test(self) -> str:
        tag = uuid.uuid4().hex[:10]
        body = {
            "schemas": self.link.schema.schemas[:1],
            "userName": f"provisiond-check-{tag}@example.invalid",
            "externalId": f"provisiond-check-{tag}",
            "name": {"givenName": "provisiond", "familyName": "check"},
            "emails": [
                {"value": f"provisiond-check-{tag}@example.com", "type": "work", "primary": True}
            ],
            "active": True,
        }
        created = await self.client.create(self.link.schema.resource(body))
        assert created.id
        try:
            if self.client.capabilities and self.client.capabilities.patch:
                await self.client.patch(
                    self.link.schema.model,
                    created.id,
                    [{"op": "replace", "path": "active", "value": False}],
                )
            else:
                created.active = False
                await self.client.replace(created)
        finally:
            await self.client.delete(self.link.schema.model, created.id)
        return f"{self.kind} {self.name}: write test created, deactivated and deleted a test user"

    # -- what the core asks of a target (optional Target methods) ---------------------

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        """Forget objects released from the target (groups unbound): left as they are."""
        # The store forgot their links in the same transaction that released them;
        # under the lock, so a reconciliation in flight never repairs them again.
        async with self.link.busy:
            self.link.links.forget(list(keys))
        self.log.info("stopped managing unbound objects", objects=len(keys))

    def status(self) -> dict[str, object]:
        """Token and quarantine state for ``provisiond status`` and the status API."""
        return self.health.describe()

    async def periodic(self) -> None:
        """The target's own periodic work: reconciliation when it is due."""
        if not self._closed:
            await self.reconcile_if_due()

    async def aclose(self) -> None:
        # After the object being repaired, if a reconciliation is running: nothing
        # of this target writes to the store after it closed (a reload's new target
        # has loaded the links by then).
        async with self.link.busy:
            self._closed = True
            try:
                if self.link.links.loaded:
                    await self.link.links.flush()
            finally:
                await self.client.aclose()


def _yes(flag: bool) -> str:
    return "supported" if flag else "unsupported"
