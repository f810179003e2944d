"""Commands on the state store: ``status`` and ``approve``."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.table import Table

from daemon.cli.common import daemon_document, fail, load_config, out, run_async
from daemon.service import open_store
from daemon.status import store_status


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show each target's dirty, failed and held objects (read from the state store)."""
    config = load_config(ctx)

    async def status_() -> dict[str, Any]:
        store = await open_store(config)
        try:
            return await store_status(store, config.settings.targets)
        finally:
            await store.aclose()

    doc = run_async(status_)
    running = daemon_document(config, "/api/v1/status")
    if running is not None and running.get("source_watch") is not None:
        doc["source_watch"] = running["source_watch"]
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    out.print(f"directory snapshot: {doc['snapshot_version'] or 'none committed yet'}")
    watch = doc.get("source_watch")
    if watch is not None:
        out.print(f"change watch: {_watch(watch)}", highlight=False)
    ha = bool(config.settings.ha.enabled)
    if ha:
        out.print(f"directory polled by: {_leader(doc['source_leader'])}", highlight=False)
    table = Table()
    columns = ["target", "kind", "dirty", "failed", "held removals"]
    for col in [*columns, "leader"] if ha else columns:
        table.add_column(col)
    for name, t in doc["targets"].items():
        held = str(t["held_removals"]) + (" (approved)" if t["hold_approved"] else "")
        row = [name, t["kind"], str(t["dirty"]), str(t["failed"]), held]
        if ha:
            row.append(_leader(t["leader"]))
        table.add_row(*row)
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


def _watch(watch: dict[str, Any]) -> str:
    """The running daemon's source watch, for a person."""
    if not watch.get("running"):
        return "not running on this replica (another replica leads the source)"
    since = ""
    if watch.get("since"):
        since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(watch["since"]))
    state = "connected" if watch.get("connected") else "down, retrying"
    line = f"{watch['source']} {state}{since}, {watch.get('reconnects', 0)} reconnects"
    if watch.get("cookie_age_seconds") is not None:
        line += f", sync cookie {watch['cookie_age_seconds']} s old"
    if not watch.get("connected") and watch.get("last_error"):
        line += f": {watch['last_error']}"
    return line


def _leader(leader: dict[str, Any] | None) -> str:
    """Who leads, for a person: the holder, its term, and since when."""
    if leader is None:
        return "no replica (the lease is free)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(leader["since"]))
    return f"{leader['holder']} (term {leader['term']}, since {since})"


@click.command()
@click.argument("target")
@click.pass_context
def approve(ctx: click.Context, target: str) -> None:
    """Release the removals the mass-removal guard holds for TARGET."""
    config = load_config(ctx)
    if target not in {t.name for t in config.settings.targets}:
        fail(f"no target named {target!r} in the configuration")

    async def approve_() -> int:
        store = await open_store(config)
        try:
            return await store.approve(target)
        finally:
            await store.aclose()

    n = run_async(approve_)
    if n == 0:
        out.print(f"target {target} has no held removals")
        return
    out.print(f"approved {n} held removal(s) for {target}; they are sent in the next cycle")
