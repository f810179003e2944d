"""Commands that run cycles: ``run`` (the daemon), ``sync`` and ``plan``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from daemon import logs
from daemon.cli import on_demand
from daemon.cli.common import Session, ask_daemon, fail, load_config, out, run_async
from daemon.config import Config, ConfigError
from daemon.engine import PlannedDelta
from daemon.leadership import Leadership
from daemon.plugins import PluginError
from daemon.service import Service
from daemon.status import report_dict


@click.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon: poll, provision, and serve /metrics and the admin API.

    A source that can watch for changes (the file source with
    source.options.watch, the default; LDAP with syncrepl, source.options.sync
    auto or syncrepl; JumpCloud with source.options.events) runs a cycle as
    soon as it sees one:
    notices are gathered for engine.debounce seconds (default 0.25), at most
    engine.max_pending_keys object ids are kept (default 10000; past that,
    "everything changed"), and the poll every engine.interval seconds stays
    as the safety net. `provisiond status` shows whether the watch is up.
    """
    try:
        service = Service(ctx.obj)
    except (ConfigError, PluginError) as exc:
        fail(str(exc))
    sys.exit(run_async(service.run))


@click.command()
@click.option("--once", is_flag=True, help="Run one cycle in this process, then exit.")
@click.option(
    "--dry-run", is_flag=True, help="With --once: show what would be sent; change nothing."
)
@click.option(
    "--user", "users", multiple=True, metavar="USER",
    help="Deliver this user now (a username, an email or an id); repeatable. Implies --once.",
)  # fmt: skip
@click.option(
    "--group", "groups", multiple=True, metavar="GROUP",
    help="Deliver this group now (a name or an id); repeatable. Implies --once.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="With --user/--group: JSON steps.")
@click.pass_context
def sync(
    ctx: click.Context,
    once: bool,
    dry_run: bool,
    users: tuple[str, ...],
    groups: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run one cycle now (--once), or ask the running daemon to (without --once).

    With --user or --group: plan as a cycle does, then deliver just those
    objects now, whatever their retry time, and print each step (scope,
    match or adopt, action, result). It takes the same leases as a cycle
    and may run while the daemon runs. An unknown user or group exits 1.
    """
    config = load_config(ctx)
    if users or groups:
        if dry_run:
            fail("--dry-run cannot be used with --user or --group; use provisiond plan", 2)
        on_demand.run(config, users, groups, as_json)
        return
    if not once:
        ask_daemon(config, "POST", "/api/v1/sync")
        out.print("the running daemon starts a cycle now")
        return
    if dry_run:
        _print_plan(run_async(lambda: _preview(config)), as_json=False)
        return
    logs.configure(config.settings.logging.level, config.settings.logging.format)

    async def once_() -> dict[str, Any] | None:
        async with Session(config) as session:
            return await session.leading(lambda leadership: _once(session, leadership))

    report = run_async(once_)
    out.print_json(json.dumps(report))
    failed = report and any(t["failed"] for t in report["targets"].values())
    if report and (report["result"] == "failed" or failed):
        sys.exit(1)


async def _once(session: Session, leadership: Leadership | None) -> dict[str, Any] | None:
    engine = session.engine(leadership)
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
                    tasks[target] = progress.add_task(f"delivering to {target}", total=total)
                progress.update(tasks[target], completed=done, total=total)

            engine.progress = show
            report = await engine.cycle()
    else:
        report = await engine.cycle()
    # Work that is due by the store's clock (reconciliation) runs here too.
    await engine.periodic_all()
    return report_dict(report)


async def _preview(config: Config) -> list[PlannedDelta]:
    async with Session(config) as session:
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


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plan(ctx: click.Context, as_json: bool) -> None:
    """Show what the next cycle would send to each target (changes nothing)."""
    config = load_config(ctx)
    logs.configure("warning", "json" if as_json else "auto")
    _print_plan(run_async(lambda: _preview(config)), as_json)
