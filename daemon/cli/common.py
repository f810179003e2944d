"""What every ``provisiond`` command shares: the consoles, errors, and opening the parts."""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import anyio
import click
from rich.console import Console
from rich.markup import escape

from daemon.config import Config, ConfigError
from daemon.engine import Engine
from daemon.http.serve import ListenError
from daemon.leadership import Leadership
from daemon.plugins import PluginError, plugin_manager
from daemon.secrets import SECRETS
from daemon.service import Parts, admin_token, assemble, open_store, read_config
from daemon.sources.base import SourceError
from daemon.store import StateError, Store

T = TypeVar("T")
out = Console()
# Errors are not wrapped: a path or setting broken across lines cannot be copied
# or found with grep (the terminal wraps them if it must).
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    # The message is text, not markup: a setting path such as ``mapping.title.[key]``
    # or ``emails[type eq "work"]`` would otherwise lose its brackets.
    err.print(f"[bold red]error:[/] {escape(SECRETS.redact(message))}", highlight=False)
    sys.exit(code)


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` on a fresh event loop; an expected failure exits 2 with its message."""
    try:
        return anyio.run(fn)
    except ConfigError as exc:
        fail(str(exc))
    except (StateError, SourceError, PluginError, ListenError) as exc:
        fail(str(exc))


def load_config(ctx: click.Context) -> Config:
    """The configuration named by ``-c`` (in ``ctx.obj``), validated against the plugins."""
    try:
        return read_config(ctx.obj, plugin_manager())
    except ConfigError as exc:
        fail(str(exc))
    except PluginError as exc:
        fail(str(exc))


class Session:
    """A store, a source and targets opened for one command."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pm = config.plugins or plugin_manager()
        self.parts: Parts | None = None
        self.store: Store | None = None

    async def __aenter__(self) -> Session:
        self.parts = assemble(self.config, self.pm)
        self.store = await open_store(self.config)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.parts is not None:
            await self.parts.aclose()
        if self.store is not None:
            await self.store.aclose()

    def engine(self, leadership: Leadership | None = None) -> Engine:
        assert self.parts is not None and self.store is not None
        engine = Engine(
            self.parts.source,
            self.parts.slots,
            self.store,
            self.pm,
            self.config.settings.engine,
            leadership=leadership,
        )
        engine.provisioning_log = self.config.settings.state.log_retention_days > 0
        return engine

    async def leading(self, work: Callable[[Leadership | None], Awaitable[T]]) -> T:
        """``work(leadership)`` holding every lease (with ``ha.enabled``; else ``None``).

        A one-off cycle next to running replicas would write unfenced, so it
        takes the source and every target lease first, renews them while it
        runs, and releases them at the end. Any of them held by a replica:
        :class:`StateError` naming it.
        """
        ha = self.config.settings.ha
        if not ha.enabled:
            return await work(None)
        assert self.parts is not None and self.store is not None
        leadership = Leadership(
            self.store,
            replica_id=f"{ha.replica_id}-cli",
            lease_seconds=ha.lease_seconds,
            renew_every=ha.renew_every,
            targets=[slot.name for slot in self.parts.slots],
            spread=False,
        )
        try:
            held = await leadership.acquire_all()
            if held:
                who = ", ".join(f"{x.name} by {x.holder}" for x in held)
                raise StateError(
                    f"with ha.enabled, a one-off cycle needs every lease, and replicas hold "
                    f"some ({who}); ask them for a cycle with `provisiond sync` instead"
                )
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(functools.partial(leadership.run, first=False))
                    result = await work(leadership)
                    tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
            return result
        finally:
            with anyio.CancelScope(shield=True):
                await leadership.release_all()


def ask_daemon(config: Config, method: str, path: str) -> None:
    """Call the running daemon's admin API on the ops listener (with the admin token)."""
    import urllib.error
    import urllib.request

    ops = config.settings.http.ops
    host = "127.0.0.1" if ops.host in ("0.0.0.0", "::", "") else ops.host  # noqa: S104
    req = urllib.request.Request(f"http://{host}:{ops.port}{path}", method=method)
    token = admin_token(config)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token.value()}")
    try:
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310
            pass
    except urllib.error.HTTPError as exc:
        fail(f"the daemon at {host}:{ops.port} answered {exc.code}")
    except OSError as exc:
        fail(f"cannot reach the daemon at {host}:{ops.port} ({exc}); is `provisiond run` up?")


def daemon_document(config: Config, path: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET a JSON document from the running daemon's admin API, or ``None`` if none answers."""
    import json
    import urllib.error
    import urllib.request

    ops = config.settings.http.ops
    if not ops.port:
        return None
    host = "127.0.0.1" if ops.host in ("0.0.0.0", "::", "") else ops.host  # noqa: S104
    req = urllib.request.Request(f"http://{host}:{ops.port}{path}")
    token = admin_token(config)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token.value()}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            doc = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
