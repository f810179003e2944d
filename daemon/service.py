"""The running daemon: assembles the parts, owns the loop, the signals and the listeners.

Structure (anyio, no stray tasks)::

    Service.run
      task group
        signals      SIGTERM/SIGINT: stop within the grace; SIGHUP: reload
        poll loop    one cycle at a time, interval with jitter, or when triggered
                     (also when a watching source's notices have settled)
        watch        (a source with ``watch``, on the source leader) the source's change
                     watch, started again with backoff when it fails
        purge loop   (with the public listener) expired sign-in state out of the store
      ops listener   /metrics /healthz /readyz /api/v1/...
      public listener  (when enabled) routes from plugins
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pluggy
import structlog
from aiohttp import web

from daemon import __version__, holds, logs, metrics
from daemon import explain as explaining
from daemon.config import Config, ConfigError, TargetSettings, read_file
from daemon.config import load as load_config
from daemon.directory import Directory
from daemon.engine import Engine, TargetSlot
from daemon.http import serve
from daemon.http.ops import build_ops_app
from daemon.leadership import SOURCE, Leadership, new_holder, target_lease
from daemon.model import User
from daemon.notify import Notifier
from daemon.plugins import Registry, await_me_maybe, plugin_manager
from daemon.portal import PortalConfigError, build_public_app
from daemon.portal.admin import AdminBackend, StoreDecisions
from daemon.portal.session_key import SessionKeyError
from daemon.runtime import PluginContext
from daemon.saml.errors import SamlConfigError
from daemon.secrets import SECRETS, SecretError, SecretFile, SecretStore, resolve_secret_path
from daemon.sources import metrics as source_metrics
from daemon.sources.base import Source, SourceError
from daemon.status import daemon_status, summary_line
from daemon.store import LogEntry, StateError, Store, StoreUnavailable
from daemon.store.sqlite import SqliteStore
from daemon.targets.base import Target

#: Seconds between looks at whether a target's periodic work (reconciliation) is due.
PERIODIC_EVERY = 30.0
#: Seconds between purges of expired sessions, replay IDs, parked requests and
#: failed sign-ins (the store also drops them as it goes).
PURGE_EVERY = 60.0
#: The first and the longest wait before a failed source watch starts again.
WATCH_BACKOFF = (1.0, 60.0)
#: A watch that ran this long before failing starts again after the first wait.
WATCH_HEALTHY_AFTER = 60.0
#: Seconds between looks at whether the watch should run (leadership, a reload).
WATCH_LOOK_EVERY = 0.5
#: Provisioning-log entries one purge statement deletes at most (bounded batches:
#: no long transaction and no lock held while a month of entries goes).
LOG_PURGE_BATCH = 1_000
#: Batches one purge run deletes at most; the rest waits for the next run.
LOG_PURGE_BATCHES = 100

log = structlog.get_logger("provisiond.service")


@dataclass
class Parts:
    """The source and targets built from one configuration."""

    config: Config
    source: Source
    slots: list[TargetSlot]
    closed: bool = False

    @property
    def targets(self) -> dict[str, Target]:
        return {s.name: s.target for s in self.slots}

    async def aclose(self) -> None:
        """Close the source and targets (once; a second call does nothing)."""
        if self.closed:
            return
        self.closed = True
        closables: list[Source | Target] = [self.source, *(s.target for s in self.slots)]
        for closable in closables:
            try:
                await closable.aclose()
            except Exception:
                log.exception("closing a source or target failed")


def read_config(path: Path | None, pm: pluggy.PluginManager) -> Config:
    """Load and validate the configuration against the installed plugins.

    Modules named in the file's ``plugins`` list are imported and registered
    first, so their source and target kinds validate like installed ones.
    """
    if path is not None:
        names = read_file(path).get("plugins") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(str(path), ["plugins: must be a list of module names"])
        for name in names:
            if pm.get_plugin(name) is not None:
                continue
            try:
                pm.register(importlib.import_module(name), name=name)
            except ImportError as exc:
                raise ConfigError(str(path), [f"plugins: cannot import {name!r}: {exc}"]) from None
    config = load_config(path, Registry.collect(pm))
    config.plugins = pm
    return config


def assemble(config: Config, pm: pluggy.PluginManager, secrets: SecretStore = SECRETS) -> Parts:
    """Build the source and the enabled targets. Secret problems are configuration errors."""
    registry = Registry.collect(pm)
    state_dir = config.state_path.parent
    context = PluginContext(config.config_dir, state_dir, secrets)
    where = str(config.path) if config.path else "(defaults and environment)"
    settings = config.settings
    try:
        source = registry.sources[settings.source.kind].create(config.source_options, context)
    except (SecretError, ValueError) as exc:
        raise ConfigError(where, [f"source.options: {exc}"]) from None
    slots: list[TargetSlot] = []
    for i, t in enumerate(settings.targets):
        if not t.enabled:
            continue
        try:
            target = registry.targets[t.kind].create(t.name, config.target_options[t.name], context)
        except (SecretError, ValueError) as exc:
            raise ConfigError(where, [f"targets[{i}].options: {exc}"]) from None
        slots.append(TargetSlot(t, target))
    return Parts(config, source, slots)


def console_backend(
    store: Store,
    *,
    overview: Callable[[], Awaitable[Mapping[str, Any]]],
    target_names: Callable[[], Sequence[str]],
    trigger_sync: Callable[[], None],
    targets: Callable[[], Sequence[TargetSettings]],
    rules: Callable[[], explaining.SignInRules],
    clock: Callable[[], float] = time.time,
) -> AdminBackend:
    """The admin console's view of the daemon: its status, per-object decisions on held
    removals (:mod:`daemon.holds`, as the CLI), ``explain`` and the provisioning log.

    ``targets`` and ``rules`` are read at each request, so they follow reloads.
    """

    async def explain(user: User) -> dict[str, Any]:
        found = await explaining.explain(store, user.id, targets(), rules())
        return found.to_json()

    async def user_log(user: User, before: int | None, limit: int) -> list[LogEntry]:
        return await store.log_entries(key=("user", user.id), before=before, limit=limit)

    return AdminBackend(
        overview=overview,
        target_names=target_names,
        trigger_sync=trigger_sync,
        decisions=StoreDecisions(store, clock),
        explain=explain,
        user_log=user_log,
    )


def admin_token(config: Config, secrets: SecretStore = SECRETS) -> SecretFile | None:
    path = config.settings.http.ops.admin_token_file
    if path is None:
        return None
    try:
        return secrets.file(resolve_secret_path(path, config.config_dir))
    except SecretError as exc:
        where = str(config.path) if config.path else "(environment)"
        raise ConfigError(where, [f"http.ops.admin_token_file: {exc}"]) from None


def application_name(replica_id: str) -> str:
    """The ``application_name`` of a replica's PostgreSQL sessions: ``provisiond/<replica_id>``.

    PostgreSQL keeps the first 63 bytes and shows other than ASCII as ``?``.
    """
    return f"provisiond/{replica_id}"


def make_store(config: Config, secrets: SecretStore = SECRETS) -> Store:
    """The store ``state.backend`` names, not opened yet. Bad settings are configuration errors."""
    state = config.settings.state
    if state.backend == "sqlite" or state.postgresql is None:
        return SqliteStore(config.state_path)
    # Imported here, not at the top: asyncpg is some 14 MB that a daemon on
    # SQLite (the default) never needs.
    from daemon.store.postgres import PostgresStore, tls_option

    pg = state.postgresql
    where = str(config.path) if config.path else "(defaults and environment)"
    password: Callable[[], str] | None = None
    if pg.password_file is not None:
        try:
            # A callable: every new connection reads the file again, so a
            # rotated password needs no restart.
            password = secrets.file(resolve_secret_path(pg.password_file, config.config_dir)).value
        except SecretError as exc:
            raise ConfigError(where, [f"state.postgresql.password_file: {exc}"]) from None
    root = None if pg.ssl_root_cert is None else config.resolve(pg.ssl_root_cert)
    try:
        tls = tls_option(pg.sslmode, root)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            where, [f"state.postgresql.ssl_root_cert: cannot load {root}: {exc}"]
        ) from None
    return PostgresStore(
        pg.dsn,
        password=password,
        ssl=tls,
        pool_size=pg.pool_size,
        connect_timeout=pg.connect_timeout,
        transaction_pooler=pg.transaction_pooler,
        # pg_stat_activity tells the replicas apart (and an operator can end one's sessions).
        application_name=application_name(config.settings.ha.replica_id),
    )


async def purge_log(store: Store, before: float) -> int:
    """Delete the log entries made before ``before``: :data:`LOG_PURGE_BATCH` a statement,
    at most :data:`LOG_PURGE_BATCHES` statements; how many went."""
    gone = 0
    for _ in range(LOG_PURGE_BATCHES):
        n = await store.purge_log(before, LOG_PURGE_BATCH)
        gone += n
        if n < LOG_PURGE_BATCH:
            break
        await anyio.lowlevel.checkpoint()  # let cycles and requests in between batches
    return gone


async def open_store(config: Config) -> Store:
    """Open the configured store (``state.backend``); :class:`StateError` if it cannot be."""
    store = make_store(config)
    await store.open()
    return store


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def store_unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The :class:`StoreUnavailable` that ``exc`` is, or that every error of its group is."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        if leaves and all(isinstance(leaf, StoreUnavailable) for leaf in leaves):
            return leaves[0]  # type: ignore[return-value]
    return None


def _on_exit(stack: contextlib.AsyncExitStack, close: Callable[[], Awaitable[None]]) -> None:
    """Run ``close`` when ``stack`` unwinds, even while the daemon is being cancelled."""

    async def shielded() -> None:
        with anyio.CancelScope(shield=True):
            await close()

    stack.push_async_callback(shielded)


class Service:
    """``provisiond run``: the long-running daemon (implements the ops Controller)."""

    def __init__(self, config_path: Path | None, pm: pluggy.PluginManager | None = None) -> None:
        self.config_path = config_path
        self.pm = pm or plugin_manager()
        self.config = read_config(config_path, self.pm)
        self.parts: Parts | None = None
        self.store: Store | None = None
        self.engine: Engine | None = None
        self.directory: Directory | None = None
        self.stopping = False
        self._live = False
        self._ready = False
        self._wake = anyio.Event()
        self._cycle_lock = anyio.Lock()
        self._cycle_scope: anyio.CancelScope | None = None
        self._status: dict[str, Any] = {}
        self.ops_port: int | None = None
        self.notifier = Notifier()
        self.public_port: int | None = None
        #: Leader election among replicas (``ha.enabled``); ``None``: this process leads all.
        self.leadership: Leadership | None = None
        self.holder = new_holder(self.config.settings.ha.replica_id)
        self.started_at = time.time()
        self._watch_running = False

    # -- Controller ----------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self._live

    @property
    def ready(self) -> bool:
        return self._ready

    def status(self) -> dict[str, Any]:
        """The status document of the last cycle, with who leads what as of now."""
        return self._with_leaders(self._status)

    async def status_now(self) -> dict[str, Any]:
        """The status document read from the store now (the admin console's overview);
        raises :class:`~daemon.store.StateError` when the store cannot be reached."""
        return self._with_leaders(await self._read_status())

    def _with_leaders(self, status: dict[str, Any]) -> dict[str, Any]:
        doc = dict(status)
        doc["replica"] = self.config.settings.ha.replica_id
        doc["source_leader"] = self._leader(SOURCE)
        doc["source_watch"] = self._watch_status()
        targets = doc.get("targets")
        if isinstance(targets, dict):
            doc["targets"] = {
                name: {**fields, "leader": self._leader(target_lease(name))}
                for name, fields in targets.items()
            }
        return doc

    def _watch_status(self) -> dict[str, Any] | None:
        """The source's change watch: running here, connected, since when, reconnects."""
        if self.parts is None or getattr(self.parts.source, "watch", None) is None:
            return None
        kind = self.parts.source.kind
        state = source_metrics.watch_state(kind)
        doc: dict[str, Any] = {
            "source": kind,
            "running": self._watch_running,
            "connected": bool(state and state.connected and self._watch_running),
            "since": state.since if state else None,
            "reconnects": state.reconnects if state else 0,
            "last_error": state.last_error if state else None,
        }
        if state is not None and state.cookie_moved_at is not None:
            doc["cookie_age_seconds"] = round(max(0.0, time.time() - state.cookie_moved_at), 1)
        return doc

    def _leader(self, lease: str) -> dict[str, Any] | None:
        if self.leadership is not None:
            return self.leadership.leader(lease)
        # Without leader election this process leads everything, since it started.
        return {
            "holder": self.holder,
            "term": None,
            "since": self.started_at,
            "expires_at": None,
            "mine": True,
        }

    def trigger_sync(self) -> None:
        self._wake.set()

    async def approve(self, target: str) -> int:
        if self.store is None or self.parts is None:
            raise KeyError(target)
        if target not in self.parts.targets:
            raise KeyError(target)
        released = await holds.approve(self.store, target, None, "admin-api", time.time())
        self.trigger_sync()
        return len(released)

    async def explain(self, login: str, target: str | None) -> dict[str, Any]:
        if self.store is None:
            raise LookupError("provisiond is still starting")
        targets = self.config.settings.targets
        if target is not None:
            targets = [t for t in targets if t.name == target]
            if not targets:
                raise LookupError(f"no target named {target!r} is configured")
        found = await explaining.explain(
            self.store, login, targets, explaining.rules_of(self.config)
        )
        return found.to_json()

    # -- life cycle ----------------------------------------------------------------

    async def run(self) -> int:
        settings = self.config.settings
        logs.configure(settings.logging.level, settings.logging.format)
        try:
            async with anyio.create_task_group() as tg:
                # Signal handlers first: as PID 1 in a container, a process that
                # has none yet ignores SIGTERM during start-up.
                tg.start_soon(self._signals, tg.cancel_scope)
                try:
                    await self._serve()
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One failure (a busy port, a bad key) is reported as itself.
            leaves = list(_leaves(group))
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
        log.info("provisiond stopped")
        return 0

    async def _serve(self) -> None:
        settings = self.config.settings
        async with contextlib.AsyncExitStack() as stack:
            self.parts = assemble(self.config, self.pm)
            _on_exit(stack, self.parts.aclose)
            token = admin_token(self.config)
            self.store = await open_store(self.config)
            _on_exit(stack, self.store.aclose)
            if settings.ha.enabled:
                # Leases on a connection of their own: a long commit never delays a renewal.
                leases = await open_store(self.config)
                _on_exit(stack, leases.aclose)
                self.leadership = Leadership(
                    leases,
                    replica_id=settings.ha.replica_id,
                    holder=self.holder,
                    lease_seconds=settings.ha.lease_seconds,
                    renew_every=settings.ha.renew_every,
                    targets=[slot.name for slot in self.parts.slots],
                )
                self.leadership.on_gain = lambda _lease: self.trigger_sync()
                _on_exit(stack, self._stop_leading)
            else:
                metrics.SOURCE_LEADER.set(1)
                for slot in self.parts.slots:
                    metrics.LEADER.labels(slot.name).set(1)
            self.engine = Engine(
                self.parts.source,
                self.parts.slots,
                self.store,
                self.pm,
                settings.engine,
                leadership=self.leadership,
            )
            self.engine.stopping = self.stopping
            self.engine.provisioning_log = settings.state.log_retention_days > 0
            self.directory = Directory(self.store, self.parts.source)
            ops = await serve.start(
                build_ops_app(self, admin_token=token),
                settings.http.ops.host,
                settings.http.ops.port,
            )
            _on_exit(stack, ops.stop)
            self.ops_port = ops.port
            _on_exit(stack, self._shutdown_hooks)
            for result in self.pm.hook.provisiond_startup(targets=self.parts.targets):
                await await_me_maybe(result)
            if settings.http.public.enabled:
                public = await serve.start(
                    await self._public_app(), settings.http.public.host, settings.http.public.port
                )
                _on_exit(stack, public.stop)
                self.public_port = public.port
            log.info(
                "provisiond started",
                version=__version__,
                config=str(self.config_path) if self.config_path else None,
                ops=f"http://{settings.http.ops.host}:{ops.port}",
                targets=list(self.parts.targets),
                replica=settings.ha.replica_id if settings.ha.enabled else None,
                holder=self.holder if settings.ha.enabled else None,
            )
            self._live = True
            _on_exit(stack, self._not_live)
            if self.leadership is not None:
                # Before the first cycle, so that a replica on its own leads from the start.
                await self.leadership.tick()
            await self._refresh_status()
            self.notifier.ready(f"serving; ops on port {ops.port}")
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.notifier.watchdog)
                tg.start_soon(self._periodic)
                tg.start_soon(self._purge_log)
                if self.leadership is not None:
                    tg.start_soon(functools.partial(self.leadership.run, first=False))
                    tg.start_soon(self._follow, self.leadership)
                if settings.http.public.enabled:
                    tg.start_soon(self._purge)
                tg.start_soon(self._watch)
                await self._poll()
                tg.cancel_scope.cancel()

    async def _periodic(self) -> None:
        """Each target's periodic work (reconciliation) in a task of its own.

        One target's long drift check never delays another target, nor the
        cycles (a SCIM target's reconciliation locks one repair at a time).
        """
        engine = self.engine
        assert engine is not None
        running: set[int] = set()

        async def one(slot: TargetSlot) -> None:
            try:
                await engine.periodic(slot)
            finally:
                running.discard(id(slot.target))

        async with anyio.create_task_group() as tg:
            while not engine.stopping:
                # engine.targets is replaced on reload; new targets get their task.
                for slot in list(engine.targets):
                    if id(slot.target) not in running:
                        running.add(id(slot.target))
                        tg.start_soon(one, slot)
                await anyio.sleep(PERIODIC_EVERY)

    async def _follow(self, leadership: Leadership) -> None:
        """Start a cycle when another replica gave this one work, instead of at the next poll.

        A target leader that does not poll the directory delivers once the
        source leader (another replica) committed a snapshot. The source
        leader plans again once a hold was approved (``provisiond approve``
        may have asked any replica, or none). Both are looked for every
        ``ha.renew_every`` seconds.
        """
        assert self.store is not None
        committed = await self.store.get_meta("snapshot_committed_at")
        approved: list[str] = []
        while not self.stopping:
            await anyio.sleep(leadership.renew_every)
            try:
                if leadership.leads(SOURCE):
                    now_approved = sorted(await self.store.approved_holds())
                    if now_approved and now_approved != approved:
                        self.trigger_sync()
                    approved = now_approved
                    continue
                now_committed = await self.store.get_meta("snapshot_committed_at")
            except Exception as exc:
                if store_unavailable(exc) is not None:
                    log.warning("reading the state store failed", error=str(exc))
                else:
                    log.exception("reading the state store failed")
                continue
            if now_committed != committed:
                committed = now_committed
                if any(leadership.leads(target_lease(t)) for t in leadership.targets):
                    self.trigger_sync()

    def _leads_source(self) -> bool:
        return self.leadership is None or self.leadership.leads(SOURCE)

    def _watch_wanted(self, source: Source) -> bool:
        """Whether ``source``'s watch should go on (this replica leads it, and it is current)."""
        assert self.parts is not None
        return not self.stopping and self.parts.source is source and self._leads_source()

    async def _watch(self) -> None:
        """Run the source's change watch while this replica leads the source.

        The watch hands notices to the engine (``Engine.announce``); the poll
        loop runs a cycle once they settle. A watch that fails (raises, or
        returns) starts again after a backoff that doubles up to
        ``WATCH_BACKOFF[1]``, with jitter; the periodic poll goes on meanwhile.
        Losing the source lease, or a reload that replaces the source, stops
        the watch; the new source's watch starts at once.
        """
        assert self.engine is not None and self.parts is not None
        backoff = WATCH_BACKOFF[0]
        while not self.stopping:
            source = self.parts.source
            watch = getattr(source, "watch", None)
            if watch is None or not self._leads_source():
                await anyio.sleep(WATCH_LOOK_EVERY)
                continue
            started = time.monotonic()
            error = await self._watch_once(source, watch)
            if self.stopping:
                return
            if error is None:
                backoff = WATCH_BACKOFF[0]
                continue  # stopped on purpose: the lease went, or the source was replaced
            if time.monotonic() - started >= WATCH_HEALTHY_AFTER:
                backoff = WATCH_BACKOFF[0]
            source_metrics.watch_connected(source.kind, False, error)
            wait = backoff * random.uniform(0.5, 1.0)  # noqa: S311
            log.warning(
                "the source's change watch failed; polling goes on, and the watch starts again",
                source=source.kind,
                error=error,
                retry_in=round(wait, 1),
            )
            await anyio.sleep(wait)
            backoff = min(backoff * 2, WATCH_BACKOFF[1])
            source_metrics.watch_reconnected(source.kind)
            # Changes made while the watch was down are found by the cycle it triggers.
            self.trigger_sync()

    async def _watch_once(
        self, source: Source, watch: Callable[..., Awaitable[None]]
    ) -> str | None:
        """Run one watch until it fails (the error) or is stopped on purpose (``None``)."""
        assert self.engine is not None and self.parts is not None
        engine = self.engine
        failure: list[str] = []

        async def run(scope: anyio.CancelScope) -> None:
            try:
                await watch(engine.announce)
                failure.append("the watch ended")
            except SourceError as exc:
                failure.append(str(exc))
            except Exception as exc:
                log.exception("the source's change watch crashed")
                failure.append(f"{type(exc).__name__}: {exc}")
            finally:
                scope.cancel()

        self._watch_running = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, tg.cancel_scope)
                # Leadership and reloads have no event to wait on: look every so often.
                while self._watch_wanted(source):  # noqa: ASYNC110
                    await anyio.sleep(WATCH_LOOK_EVERY)
                tg.cancel_scope.cancel()
        finally:
            self._watch_running = False
        if not failure:
            source_metrics.watch_connected(source.kind, False)
        return failure[0] if failure else None

    async def _stop_leading(self) -> None:
        """On the way out: close the targets (their last writes are fenced), then release.

        Nothing runs under the leases any more by then, so another replica may
        take over at once instead of after the leases ran out.
        """
        if self.parts is not None:
            await self.parts.aclose()
        if self.leadership is not None:
            await self.leadership.release_all()

    async def _purge(self) -> None:
        """Delete expired sign-in state every :data:`PURGE_EVERY` seconds (every replica may)."""
        assert self.store is not None
        while not self.stopping:
            try:
                purged = await self.store.purge(time.time())
            except StateError as exc:
                log.warning("purging expired sign-in state failed", error=str(exc))
            except Exception:
                # Sign-in goes on without the purge; the next one tries again.
                log.exception("purging expired sign-in state failed")
            else:
                if purged:
                    log.debug("expired sign-in state purged", rows=purged)
            await anyio.sleep(PURGE_EVERY)

    async def _purge_log(self) -> None:
        """Delete provisioning-log entries past ``state.log_retention_days``, in bounded batches."""
        assert self.store is not None
        while not self.stopping:
            days = self.config.settings.state.log_retention_days
            try:
                purged = await purge_log(self.store, time.time() - days * 86_400)
            except StateError as exc:
                log.warning("purging the provisioning log failed", error=str(exc))
            except Exception:
                log.exception("purging the provisioning log failed")
            else:
                if purged:
                    log.debug("old provisioning-log entries purged", rows=purged)
            await anyio.sleep(PURGE_EVERY)

    async def _not_live(self) -> None:
        self._live = False

    async def _shutdown_hooks(self) -> None:
        for result in self.pm.hook.provisiond_shutdown():
            try:
                await await_me_maybe(result)
            except Exception:
                log.exception("a provisiond_shutdown hook failed")

    async def _public_app(self) -> web.Application:
        """The public listener: the portal, plus every plugin's routes under its middleware."""
        assert self.parts is not None and self.directory is not None
        where = str(self.config_path) if self.config_path else "(defaults and environment)"
        try:
            routes = self.pm.hook.provisiond_public_routes(
                targets=self.parts.targets, directory=self.directory
            )
            return await build_public_app(
                self.config.settings.http.public,
                self.directory,
                routes,
                state_dir=self.config.state_path.parent,
                config_dir=self.config.config_dir,
                console=self._console(),
            )
        except (PortalConfigError, SessionKeyError, SamlConfigError) as exc:
            raise ConfigError(where, [f"http.public: {exc}"]) from None

    async def _poll(self) -> None:
        """Run cycles until stopped."""
        assert self.engine is not None
        interval = self.config.settings.engine
        while not self.stopping:
            # A new event before the cycle: a trigger during it (a lease won, a
            # snapshot committed elsewhere) runs another cycle right after.
            self._wake = anyio.Event()
            async with self._cycle_lock:
                with anyio.CancelScope() as scope:
                    self._cycle_scope = scope
                    try:
                        await self.engine.cycle()
                    except Exception as exc:
                        lost = store_unavailable(exc)
                        if lost is not None:
                            # PostgreSQL restarting, say: no stack trace for that.
                            log.warning(
                                "cycle failed: the state store is unavailable; the next one "
                                "retries",
                                error=str(lost),
                            )
                        else:
                            log.exception("cycle crashed; the next one retries")
                self._cycle_scope = None
            self._ready = True
            await self._refresh_status()
            self.notifier.status(self._summary())
            if self.stopping:
                break
            jitter = interval.jitter
            delay = interval.interval * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311
            await self._wait_next(delay)

    async def _wait_next(self, delay: float) -> None:
        """Until ``delay`` passed, a trigger, or announced changes settled (whichever is first)."""
        assert self.engine is not None
        engine = self.engine
        with anyio.move_on_after(delay):
            async with anyio.create_task_group() as tg:

                async def woken() -> None:
                    await self._wake.wait()
                    tg.cancel_scope.cancel()

                async def noticed() -> None:
                    await engine.settled()
                    tg.cancel_scope.cancel()

                tg.start_soon(woken)
                tg.start_soon(noticed)

    def _summary(self) -> str:
        """One line for systemctl status."""
        return summary_line(self.engine.last_report if self.engine else None, self._status)

    async def _refresh_status(self) -> None:
        try:
            self._status = await self._read_status()
        except Exception as exc:
            if store_unavailable(exc) is not None:
                log.warning("reading status from the state store failed", error=str(exc))
            else:
                log.exception("reading status from the state store failed")

    async def _read_status(self) -> dict[str, Any]:
        assert self.store is not None and self.parts is not None and self.engine is not None
        return await daemon_status(
            self.store,
            [slot.settings for slot in self.parts.slots],
            targets=self.parts.targets,
            source_kind=self.parts.config.settings.source.kind,
            last_report=self.engine.last_report,
            live=self._live,
            ready=self._ready,
            source=self.parts.source,
        )

    def _console(self) -> AdminBackend:
        """What the admin console reads and steers (it follows reloads)."""
        assert self.store is not None
        return console_backend(
            self.store,
            overview=self.status_now,
            target_names=lambda: [s.name for s in self.parts.slots] if self.parts else [],
            trigger_sync=self.trigger_sync,
            targets=lambda: self.config.settings.targets,
            rules=lambda: explaining.rules_of(self.config),
        )

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                await self.stop(signal.Signals(signum).name)
                return

    async def stop(self, why: str = "requested") -> None:
        """Finish the cycle in flight within ``engine.shutdown_grace``, then stop."""
        grace = self.config.settings.engine.shutdown_grace
        log.info("stopping", reason=why, grace_seconds=grace)
        self.notifier.stopping()
        self.stopping = True
        if self.engine is not None:
            self.engine.stopping = True
        self._wake.set()
        with anyio.move_on_after(grace) as timer:
            async with self._cycle_lock:
                pass
        if timer.cancelled_caught and self._cycle_scope is not None:
            log.warning("the cycle in flight did not finish within the grace; cancelling it")
            self._cycle_scope.cancel()

    async def reload(self) -> None:
        """SIGHUP: load the configuration again; keep the old one if the new one is bad."""
        if self.engine is None or self.parts is None:
            log.warning("reload ignored: provisiond is still starting")
            return
        self.notifier.reloading()
        try:
            config = read_config(self.config_path, self.pm)
            parts = assemble(config, self.pm)
        except ConfigError as exc:
            log.error(
                "configuration reload rejected; the running configuration stays",
                problems=exc.problems,
            )
            self.notifier.send("READY=1", "STATUS=reload rejected: see the log")
            return
        old = self.config.settings
        for what, before, after in (
            ("state", old.state, config.settings.state),
            ("ha", old.ha, config.settings.ha),
            ("http", old.http, config.settings.http),
        ):
            if before != after:
                log.warning(f"{what} settings changed; they take effect after a restart")
        async with self._cycle_lock:
            previous, self.parts = self.parts, parts
            self.config = config
            self.engine.reconfigure(parts.source, parts.slots, config.settings.engine)
            if self.leadership is not None:
                self.leadership.targets = [slot.name for slot in parts.slots]
            if self.directory is not None:
                self.directory.replace_source(parts.source)
        await previous.aclose()
        logs.configure(config.settings.logging.level, config.settings.logging.format)
        log.info("configuration reloaded", targets=list(parts.targets))
        self.notifier.send("READY=1", "STATUS=configuration reloaded")
        self.trigger_sync()
