"""``provisiond check``: the configuration, the state store, the source and every target."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from daemon import logs
from daemon.cli.common import Session, load_config, out, run_async
from daemon.secrets import SECRETS


@click.command()
@click.option(
    "--write-test", is_flag=True, help="Also let targets create and delete a test object."
)
@click.pass_context
def check(ctx: click.Context, write_test: bool) -> None:
    """Validate the configuration and reach the state store, the source and every target."""
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


def _bind_check(target: Any, write_test: bool) -> Callable[[], Awaitable[list[str]]]:
    async def run_check() -> list[str]:
        result: list[str] = await target.check(write_test=write_test)
        return result

    return run_check
