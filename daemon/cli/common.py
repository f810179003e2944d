"""What every ``provisiond`` command shares: the consoles, errors, and opening the parts."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio
import click
from rich.console import Console
from rich.markup import escape

from daemon.config import Config, ConfigError
from daemon.engine import Engine
from daemon.http.serve import ListenError
from daemon.plugins import PluginError, plugin_manager
from daemon.secrets import SECRETS
from daemon.service import Parts, admin_token, assemble, open_store, read_config
from daemon.sources.base import SourceError
from daemon.store import StateError, Store

T = TypeVar("T")
out = Console()
err = Console(stderr=True)


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

    def engine(self) -> Engine:
        assert self.parts is not None and self.store is not None
        return Engine(
            self.parts.source,
            self.parts.slots,
            self.store,
            self.pm,
            self.config.settings.engine,
        )


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
