"""The ``alexishr`` target: SCIM 2.0 provisioning of users and groups into AlexisHR.

One :class:`AlexisHRTarget` per configured target, each with its own SCIM
client (one pooled session, its own rate limiter), token file, mirror and
health, so a production and a sandbox target run side by side and one failing
never slows the other.

Delivery takes the core's deltas phase by phase (users, groups, group
removals, user removals), each phase concurrently up to ``max_concurrency``
requests in flight. Every delta gets exactly one :class:`Outcome`; a failure
carries the server's reason and, when known, how long to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from pydantic import BaseModel, ValidationError

from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.scim import (
    AdaptiveRateLimiter,
    Capabilities,
    RetryPolicy,
    ScimAuthError,
    ScimClient,
    ScimError,
    ScimPermanentError,
    Timeouts,
)
from daemon.store import Store
from daemon.targets.base import Delta, Outcome, TargetType
from daemon.targets.scim.links import Links
from plugins.alexishr import metrics
from plugins.alexishr.groups import remove_group, upsert_group
from plugins.alexishr.health import ACCESS_REVOKED, Health
from plugins.alexishr.mapping import UserSchema
from plugins.alexishr.options import AlexisHROptions
from plugins.alexishr.reconcile import reconcile
from plugins.alexishr.remote import Link
from plugins.alexishr.users import remove_user, upsert_user

log = structlog.get_logger("provisiond.target.alexishr")

Handler = Callable[[Link, Delta], Awaitable[Outcome]]

#: The target's meta key for the time of the last reconciliation.
LAST_RECONCILE = "last_reconcile"

#: Every AlexisHR target alive in this process (for the reconciliation hook).
_LIVE: weakref.WeakSet[AlexisHRTarget] = weakref.WeakSet()


@dataclass
class _Round:
    calls: int = 0
    transient: int = 0


def _schema_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    return f"the directory record cannot be sent as a SCIM user: {shown}"


class AlexisHRTarget:
    """Provisions one AlexisHR tenant over SCIM (see the module docstring)."""

    kind = "alexishr"

    def __init__(
        self,
        name: str,
        options: AlexisHROptions,
        context: PluginContext,
        *,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.context = context
        scim = options.scim
        self.token = context.secret_file(scim.token_file)
        ca_file: Path | None = None
        if scim.ca_bundle is not None:
            ca_file = (
                scim.ca_bundle
                if scim.ca_bundle.is_absolute()
                else context.config_dir / scim.ca_bundle
            )
        self.client = ScimClient(
            options.scim_url,
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
        schema = UserSchema(
            phone_region=scim.phone_region,
            extra_mappings=scim.extra_mappings,
            alexis_extension=scim.alexis_extension,
        )
        # Installations before the single store kept these links in a file of their own.
        links = Links(name, legacy_file=context.state_dir / f"alexishr-{name}.db")
        self.link = Link(name, scim, self.client, schema, links, clock=clock)
        self.health = Health(
            name,
            after=scim.quarantine_after,
            base=scim.quarantine_base,
            ceiling=scim.quarantine_max,
            auth_wait=scim.auth_retry_after,
            clock=clock,
        )
        self.clock = clock
        self.log = log.bind(target=name)
        #: When reconciliation last ran (kept in the store, so restarts and
        #: ``sync --once`` runs do not reset the timer); ``None`` until started.
        self.last_reconcile: float | None = None
        self._store: Store | None = None
        self._discovered = False
        _LIVE.add(self)

    async def start(self, store: Store) -> None:
        """Load what this target remembers from the core's store (once, before delivering)."""
        await self.link.mirror.load(store)
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
        blocked = self.health.blocked(self.token.changed)
        if blocked is not None:
            reason, wait = blocked
            return [Outcome.failure(d, reason, retry_after=wait) for d in deltas]
        outcomes: dict[tuple[str, str], Outcome] = {}
        stats = _Round()
        try:
            await self._ready()
        except ScimError as exc:
            stats.calls, stats.transient = 1, int(exc.transient or exc.status is None)
            for delta in deltas:
                outcomes[delta.key] = await self._failure(delta, exc, retry=None)
        else:
            await self._deliver_phases(deltas, outcomes, stats)
        await self.link.mirror.flush()
        if self.health.end_round(stats.calls, stats.transient):
            self.log.error(
                "target quarantined: most AlexisHR calls failed in consecutive rounds",
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
        if not self.options.scim.manage_groups:
            for delta in groups + group_removals:
                outcomes[delta.key] = Outcome.success(delta)
            groups, group_removals = [], []
        unmatched = sum(
            1 for d in users if not (d.remote_id or self.link.mirror.get("user", d.object_id))
        )
        try:
            await self.link.prepare_matching(unmatched)
        except ScimError as exc:
            self.log.warning("listing AlexisHR users failed", error=str(exc))
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
        limit = anyio.Semaphore(self.options.scim.max_concurrency)

        async def one(delta: Delta) -> None:
            async with limit:
                outcomes[delta.key] = await self._one(delta, handler, stats)

        async with anyio.create_task_group() as tg:
            for delta in phase:
                tg.start_soon(one, delta)

    async def _one(self, delta: Delta, handler: Handler, stats: _Round) -> Outcome:
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
                self.log.error(ACCESS_REVOKED, server_said=exc.detail)
            metrics.operation(self.name, kind, "auth")
            return Outcome.failure(delta, ACCESS_REVOKED, retry_after=self.health.auth_wait)
        if isinstance(exc, ScimPermanentError):
            metrics.operation(self.name, kind, "permanent")
            return Outcome.failure(delta, str(exc), permanent=True)
        if isinstance(exc, ScimError):
            if stats is not None and (exc.transient or exc.status is None):
                stats.transient += 1
            metrics.operation(self.name, kind, "failed")
            return Outcome.failure(delta, str(exc), retry_after=exc.retry_after or retry)
        if isinstance(exc, ValidationError):
            metrics.operation(self.name, kind, "permanent")
            return Outcome.failure(delta, _schema_summary(exc), permanent=True)
        if isinstance(exc, ValueError):
            metrics.operation(self.name, kind, "permanent")
            return Outcome.failure(delta, f"cannot be sent: {exc}", permanent=True)
        self.log.error(
            "unexpected error delivering to AlexisHR",
            object=f"{delta.kind}:{delta.object_id}",
            error=f"{type(exc).__name__}: {exc}",
        )
        if stats is not None:
            stats.transient += 1
        metrics.operation(self.name, kind, "failed")
        return Outcome.failure(delta, f"unexpected error: {type(exc).__name__}: {exc}")

    def _token_now(self) -> str | None:
        try:
            return self.token.value()
        except Exception:
            return None

    async def _rotated_since(self, used: str | None) -> bool:
        """Whether the token file holds a new token now, or within ``token_rotation_wait``."""
        deadline = self.clock() + self.options.scim.token_rotation_wait
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
                "AlexisHR SCIM service discovered",
                patch=capabilities.patch,
                filter=capabilities.filter,
                bulk=capabilities.bulk,
                max_operations=capabilities.bulk_max_operations,
            )
        assert self.client.capabilities is not None
        return self.client.capabilities

    # -- reconciliation ----------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """One full pass over AlexisHR now; returns the repairs by kind."""
        self.last_reconcile = self.clock()
        if self._store is not None:
            await self._store.set_target_meta(self.name, LAST_RECONCILE, repr(self.last_reconcile))
        try:
            await self._ready()
            repaired = await reconcile(self.link)
        except ScimError as exc:
            metrics.RECONCILIATIONS.labels(self.name, "failed").inc()
            self.log.warning("reconciliation failed; trying again next pass", error=str(exc))
            raise
        metrics.RECONCILIATIONS.labels(self.name, "ok").inc()
        self.log.info("reconciliation finished", repaired=dict(repaired))
        return dict(repaired)

    async def reconcile_if_due(self) -> None:
        """Run :meth:`reconcile` when ``reconcile_every`` has passed (and the target is usable)."""
        if self.last_reconcile is None:
            return  # not started: nothing delivered yet in this process
        if self.clock() - self.last_reconcile < self.options.scim.reconcile_every:
            return
        if self.health.blocked(self.token.changed) is not None:
            return
        with contextlib.suppress(ScimError):
            await self.reconcile()

    # -- check and close ---------------------------------------------------------

    async def check(self, write_test: bool = False) -> list[str]:
        """Discovery, auth, one read; with ``write_test`` create, deactivate, delete a user."""
        url = self.options.scim_url
        try:
            capabilities = await self.client.discover()
        except ScimAuthError as exc:
            raise RuntimeError(f"{ACCESS_REVOKED} ({exc.detail})") from None
        except ScimError as exc:
            raise RuntimeError(
                f"SCIM discovery at {url}/ServiceProviderConfig failed: {exc}. Check "
                "options.scim.base_url: AlexisHR's SCIM path is not published, the default "
                "is a guess"
            ) from None
        self._discovered = True
        page = await self.client.query(self.link.schema.model, count=1)
        chunk = capabilities.bulk_max_operations
        lines = [
            f"alexishr {self.name}: {url} answers; token accepted; "
            f"{page.total_results or 0} user(s) visible",
            f"alexishr {self.name}: PATCH {_yes(capabilities.patch)}, filter "
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
        return f"alexishr {self.name}: write test created, deactivated and deleted a test user"

    async def aclose(self) -> None:
        _LIVE.discard(self)
        try:
            if self.link.mirror.loaded:
                await self.link.mirror.flush()
        finally:
            await self.client.aclose()


def _yes(flag: bool) -> str:
    return "supported" if flag else "unsupported"


def _create(name: str, options: BaseModel, context: PluginContext) -> AlexisHRTarget:
    assert isinstance(options, AlexisHROptions)
    return AlexisHRTarget(name, options, context)


@hookimpl
def provisiond_target_types() -> list[TargetType]:
    return [
        TargetType(
            kind="alexishr",
            options=AlexisHROptions,
            create=_create,
            description="AlexisHR: SCIM 2.0 provisioning of users and groups (and SAML SSO)",
        )
    ]


@hookimpl
async def provisiond_cycle_finished() -> None:
    """Run each AlexisHR target's reconciliation pass when it is due."""
    for target in list(_LIVE):
        await target.reconcile_if_due()


@hookimpl
def provisiond_objects_released(target: object, keys: Sequence[tuple[str, str]]) -> None:
    """Forget groups unbound from the target: they stay in AlexisHR as they are."""
    if not isinstance(target, AlexisHRTarget):
        return
    # The store forgot their links in the same transaction that released them.
    target.link.mirror.forget(list(keys))
    target.link.log.info("stopped managing unbound objects", objects=len(keys))


@hookimpl
def provisiond_target_status(target: object) -> dict[str, object] | None:
    """Token and quarantine state for ``provisiond status`` and the status API."""
    if not isinstance(target, AlexisHRTarget):
        return None
    return target.health.describe()
