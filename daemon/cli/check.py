"""``provisiond check``: the configuration, the state store, the source and every target."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from daemon import logs
from daemon.cli.common import Session, load_config, out, run_async
from daemon.config import Config
from daemon.leadership import REPLICA_PREFIX, SOURCE, target_lease
from daemon.secrets import SECRETS
from daemon.store import Store


@click.command()
@click.option(
    "--write-test", is_flag=True, help="Also let targets create and delete a test object."
)
@click.pass_context
def check(ctx: click.Context, write_test: bool) -> None:
    """Validate the configuration and reach the state store, the source and every target.

    For a jumpcloud source, also ask the Directory Insights events API once:
    a key that may not read it is a warning (changes are then found by
    polling only; see the source's events options in docs/sources.md).
    """
    config = load_config(ctx)
    logs.configure("warning", "auto")
    out.print(f"[green]ok[/]  configuration {config.path or '(defaults)'} is valid")

    async def check_() -> bool:
        healthy = True
        async with Session(config) as session:
            assert session.parts is not None
            assert session.store is not None
            for line in await session.store.check():
                out.print(f"[green]ok[/]  {SECRETS.redact(line)}", highlight=False)
            if config.settings.ha.enabled:
                await _show_leases(session.store, config)
            checks: list[tuple[str, Callable[[], Awaitable[list[str]]]]] = [
                (f"source {config.settings.source.kind}", session.parts.source.check)
            ]
            for slot in session.parts.slots:
                checks.append((f"target {slot.name}", _bind_check(slot.target, write_test)))
            source_ok = True
            for label, fn in checks:
                try:
                    lines = await fn()
                except Exception as exc:
                    healthy = False
                    source_ok = source_ok and fn is not checks[0][1]
                    out.print(f"[red]FAIL[/] {label}: {SECRETS.redact(str(exc))}", highlight=False)
                    continue
                for line in lines:
                    out.print(f"[green]ok[/]  {SECRETS.redact(line)}", highlight=False)
            if source_ok:
                for stale in await session.engine().stale_now():
                    problems = "; ".join(str(p) for p in stale.problems)
                    out.print(
                        f"[yellow]warn[/] {stale.name} is unusable in the directory now; its "
                        f"last good state is kept: {SECRETS.redact(problems)}",
                        highlight=False,
                    )
        return healthy

    if not run_async(check_):
        sys.exit(1)


async def _show_leases(store: Store, config: Config) -> None:
    """The lease table: who holds each lease, at which term, and for how long still.

    A free lease is a warning, not a failure: no replica may be running yet.
    """
    rows = {lease.name: lease for lease in await store.leases()}
    names = [SOURCE, *(target_lease(t.name) for t in config.settings.targets if t.enabled)]
    for name in names:
        lease = rows.get(name)
        if lease is None:
            out.print(f"[yellow]warn[/] lease {name}: never held; no replica has run yet")
        elif lease.live:
            out.print(
                f"[green]ok[/]  lease {name}: held by {lease.holder} at term {lease.term}, "
                f"expires in {lease.expires_in:.1f}s",
                highlight=False,
            )
        else:
            out.print(
                f"[yellow]warn[/] lease {name}: free, no leader (last held by {lease.holder} "
                f"at term {lease.term}, expired {-lease.expires_in:.1f}s ago)",
                highlight=False,
            )
    replicas = sorted(
        x.holder for x in rows.values() if x.name.startswith(REPLICA_PREFIX) and x.live
    )
    out.print(
        f"[green]ok[/]  replicas running: {', '.join(replicas) or 'none'}", highlight=False
    )


def _bind_check(target: Any, write_test: bool) -> Callable[[], Awaitable[list[str]]]:
    async def run_check() -> list[str]:
        result: list[str] = await target.check(write_test=write_test)
        return result

    return run_check
