"""The ``provisiond`` command."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from daemon import __version__, logs
from daemon.config import Config, ConfigError
from daemon.engine import Engine, PlannedDelta
from daemon.http.serve import ListenError
from daemon.plugins import PluginError, plugin_manager
from daemon.screening import stale_objects
from daemon.secrets import SECRETS
from daemon.service import (
    Parts,
    Service,
    assemble,
    open_store,
    read_config,
    report_dict,
    target_status,
)
from daemon.sources.base import SourceError
from daemon.store import Store
from daemon.store.sqlite import StateError

T = TypeVar("T")
out = Console()
err = Console(stderr=True)

CONFIG_HELP = "Configuration file (YAML). Env: PROVISIOND_CONFIG."


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {SECRETS.redact(message)}", highlight=False)
    sys.exit(code)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return anyio.run(fn)
    except ConfigError as exc:
        _fail(str(exc))
    except (StateError, SourceError, PluginError, ListenError) as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="PROVISIOND_CONFIG",
    help=CONFIG_HELP,
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """provisiond: keep applications in step with your directory.

    Polls a directory (file, LDAP, JumpCloud), works out what changed, and
    provisions each configured target; see `provisiond COMMAND --help`.
    """
    ctx.obj = config_path


def _config(ctx: click.Context) -> Config:
    try:
        return read_config(ctx.obj, plugin_manager())
    except ConfigError as exc:
        _fail(str(exc))
    except PluginError as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


class _Session:
    """A store, a source and targets opened for one command."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pm = config.plugins or plugin_manager()
        self.parts: Parts | None = None
        self.store: Store | None = None

    async def __aenter__(self) -> _Session:
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


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon: poll, provision, and serve /metrics and the admin API."""
    try:
        service = Service(ctx.obj)
    except (ConfigError, PluginError) as exc:
        _fail(str(exc))
    sys.exit(_run(service.run))


@main.command()
@click.option("--once", is_flag=True, help="Run one cycle in this process, then exit.")
@click.option(
    "--dry-run", is_flag=True, help="With --once: show what would be sent; change nothing."
)
@click.pass_context
def sync(ctx: click.Context, once: bool, dry_run: bool) -> None:
    """Run one cycle now (--once), or ask the running daemon to (without --once)."""
    config = _config(ctx)
    if not once:
        _ask_daemon(config, "POST", "/api/v1/sync")
        out.print("the running daemon starts a cycle now")
        return
    if dry_run:
        _print_plan(_run(lambda: _preview(config)), as_json=False)
        return
    logs.configure(config.settings.logging.level, config.settings.logging.format)

    async def once_() -> dict[str, Any] | None:
        async with _Session(config) as session:
            engine = session.engine()
            if out.is_terminal:
                with Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    console=out,
                    transient=True,
                ) as progress:
                    tasks: dict[str, Any] = {}

                    def show(target: str, done: int, total: int) -> None:
                        if target not in tasks:
                            tasks[target] = progress.add_task(
                                f"delivering to {target}", total=total
                            )
                        progress.update(tasks[target], completed=done, total=total)

                    engine.progress = show
                    report = await engine.cycle()
            else:
                report = await engine.cycle()
            return report_dict(report)

    report = _run(once_)
    out.print_json(json.dumps(report))
    failed = report and any(t["failed"] for t in report["targets"].values())
    if report and (report["result"] == "failed" or failed):
        sys.exit(1)


async def _preview(config: Config) -> list[PlannedDelta]:
    async with _Session(config) as session:
        return await session.engine().preview()


def _plan_rows(planned: list[PlannedDelta]) -> list[dict[str, Any]]:
    from daemon.changes import describe

    return [
        {
            "target": p.target,
            "object": f"{p.delta.kind}:{p.delta.object_id}",
            "status": p.status,
            "changes": [{"kind": c.name, "description": describe(c)} for c in p.delta.changes],
        }
        for p in planned
        if p.delta.changes
    ]


def _print_plan(planned: list[PlannedDelta], as_json: bool) -> None:
    rows = _plan_rows(planned)
    if as_json:
        click.echo(json.dumps({"changes": rows}, indent=2))
        return
    if not rows:
        out.print("No changes. Every target matches the directory.")
        return
    table = Table(title="provisiond plan", show_lines=False)
    for col in ("target", "object", "status", "change"):
        table.add_column(col)
    for row in rows:
        for change in row["changes"]:
            table.add_row(row["target"], row["object"], row["status"], change["description"])
    out.print(table)
    held = sum(1 for r in rows if r["status"] == "held")
    out.print(f"{len(rows)} object(s) to change" + (f", {held} held by the guard" if held else ""))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plan(ctx: click.Context, as_json: bool) -> None:
    """Show what the next cycle would send to each target (changes nothing)."""
    config = _config(ctx)
    logs.configure("warning", "json" if as_json else "auto")
    _print_plan(_run(lambda: _preview(config)), as_json)


@main.command()
@click.option(
    "--write-test", is_flag=True, help="Also let targets create and delete a test object."
)
@click.pass_context
def check(ctx: click.Context, write_test: bool) -> None:
    """Validate the configuration and reach the state store, the source and every target."""
    config = _config(ctx)
    logs.configure("warning", "auto")
    out.print(f"[green]ok[/]  configuration {config.path or '(defaults)'} is valid")

    async def check_() -> bool:
        healthy = True
        async with _Session(config) as session:
            assert session.parts is not None
            out.print(f"[green]ok[/]  state store {config.state_path}")
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

    if not _run(check_):
        sys.exit(1)


def _bind_check(target: Any, write_test: bool) -> Callable[[], Awaitable[list[str]]]:
    async def run_check() -> list[str]:
        result: list[str] = await target.check(write_test=write_test)
        return result

    return run_check


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show each target's dirty, failed and held objects (read from the state store)."""
    config = _config(ctx)

    async def status_() -> dict[str, Any]:
        store = await open_store(config)
        try:
            from daemon.engine import TargetSlot

            slots = [TargetSlot(t, None) for t in config.settings.targets]  # type: ignore[arg-type]
            return {
                "snapshot_version": await store.get_meta("snapshot_version"),
                "snapshot_committed_at": await store.get_meta("snapshot_committed_at"),
                "stale_objects": await stale_objects(store),
                "targets": await target_status(store, slots),
            }
        finally:
            await store.aclose()

    doc = _run(status_)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    out.print(f"directory snapshot: {doc['snapshot_version'] or 'none committed yet'}")
    table = Table()
    for col in ("target", "kind", "dirty", "failed", "held removals"):
        table.add_column(col)
    for name, t in doc["targets"].items():
        held = str(t["held_removals"]) + (" (approved)" if t["hold_approved"] else "")
        table.add_row(name, t["kind"], str(t["dirty"]), str(t["failed"]), held)
    out.print(table)
    for name, t in doc["targets"].items():
        for p in t["problems"]:
            out.print(f"  {name} {p['object']}: {p['error']} (attempts {p['attempts']})")
    for stale in doc["stale_objects"]:
        out.print(
            f"  directory {stale['object']}: unusable now, last good state kept: "
            + "; ".join(stale["problems"]),
            highlight=False,
        )


@main.command()
@click.argument("target")
@click.pass_context
def approve(ctx: click.Context, target: str) -> None:
    """Release the removals the mass-removal guard holds for TARGET."""
    config = _config(ctx)
    if target not in {t.name for t in config.settings.targets}:
        _fail(f"no target named {target!r} in the configuration")

    async def approve_() -> int:
        store = await open_store(config)
        try:
            return await store.approve(target)
        finally:
            await store.aclose()

    n = _run(approve_)
    if n == 0:
        out.print(f"target {target} has no held removals")
        return
    out.print(f"approved {n} held removal(s) for {target}; they are sent in the next cycle")


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"provisiond {__version__}")


def _ask_daemon(config: Config, method: str, path: str) -> None:
    import urllib.error
    import urllib.request

    from daemon.service import admin_token

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
        _fail(f"the daemon at {host}:{ops.port} answered {exc.code}")
    except OSError as exc:
        _fail(f"cannot reach the daemon at {host}:{ops.port} ({exc}); is `provisiond run` up?")


from daemon.saml.cli import passwd, saml  # noqa: E402  (registered last: it imports this CLI's deps)

main.add_command(saml)
main.add_command(passwd)
