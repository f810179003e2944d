"""Commands on the state store: ``status``, ``held``, ``approve`` and ``reject``."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from daemon import holds
from daemon.cli.common import daemon_document, fail, load_config, out, run_async
from daemon.config import Config
from daemon.holds import HeldObject
from daemon.service import open_store
from daemon.status import store_status
from daemon.store import APPROVED, REJECTED, Key


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


def utc(at: float | None) -> str:
    """Unix seconds as UTC text ("" for none), as the console shows times."""
    if at is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _known_target(config: Config, target: str) -> None:
    if target not in {t.name for t in config.settings.targets}:
        fail(f"no target named {target!r} in the configuration", 1)


def _held_now(config: Config, target: str) -> list[HeldObject]:
    async def read() -> list[HeldObject]:
        store = await open_store(config)
        try:
            return await holds.held(store, target)
        finally:
            await store.aclose()

    return run_async(read)


@click.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def held(ctx: click.Context, target: str, as_json: bool) -> None:
    """List every key the mass-removal guard holds for TARGET, with the user and the reason.

    Pass the keys it shows (user:ID or group:ID, or an id or name alone) to
    `provisiond approve` or `provisiond reject`. A key with a decision not yet
    used by a cycle shows it, who made it (admin:<username> from the console,
    the OS user from the CLI, admin-api from the admin API) and when (UTC;
    in --json, decided_at is Unix seconds).
    """
    config = load_config(ctx)
    _known_target(config, target)
    objects = _held_now(config, target)
    if as_json:
        doc = [
            {
                "key": o.ref,
                "name": o.name,
                "reason": o.reason,
                "decision": o.decision,
                "decided_by": o.actor,
                "decided_at": o.decided_at,
            }
            for o in objects
        ]
        click.echo(json.dumps({"target": target, "held": doc}, indent=2))
        return
    if not objects:
        out.print(f"target {target} has no held removals")
        return
    table = Table()
    for col in ("key", "name", "reason", "decision", "decided by", "decided at"):
        table.add_column(col)
    for o in objects:
        table.add_row(
            escape(o.ref),
            escape(o.name),
            escape(o.reason),
            o.decision or "",
            escape(o.actor or ""),
            utc(o.decided_at),
        )
    out.print(table)
    out.print(f"{len(objects)} held; the next cycle sends what is approved")


def _decide(ctx: click.Context, target: str, refs: tuple[str, ...], decision: str) -> None:
    config = load_config(ctx)
    _known_target(config, target)
    who = holds.actor()

    async def decide() -> list[Key] | None:
        store = await open_store(config)
        try:
            keys: list[Key] | None = None
            if refs:
                keys = holds.resolve(await holds.held(store, target), refs)
            if decision == APPROVED:
                return await holds.approve(store, target, keys, who, time.time())
            assert keys is not None
            return await holds.reject(store, target, keys, who, time.time())
        finally:
            await store.aclose()

    try:
        decided = run_async(decide) or []
    except holds.UnknownKey as exc:
        fail(f"target {target}: {exc}", 1)
    verb = "approved" if decision == APPROVED else "rejected"
    if not decided:
        out.print(f"target {target} has no held removals")
        return
    out.print(f"{verb} {len(decided)} held removal(s) for {target} as {who}", highlight=False)
    if decision == APPROVED:
        out.print("they are sent in the next cycle")
    else:
        out.print("the target keeps them as they are until their directory records change")


@click.command()
@click.argument("target")
@click.argument("keys", nargs=-1)
@click.pass_context
def approve(ctx: click.Context, target: str, keys: tuple[str, ...]) -> None:
    """Release the removals the mass-removal guard holds for TARGET: all, or only KEYS.

    KEYS are as `provisiond held TARGET` shows them (user:ID, group:ID, or an
    id or name alone). Held keys not named stay held. The decision goes to the
    audit log and the provisioning log, with your OS user name.
    """
    _decide(ctx, target, keys, APPROVED)


@click.command()
@click.argument("target")
@click.argument("keys", nargs=-1, required=True)
@click.pass_context
def reject(ctx: click.Context, target: str, keys: tuple[str, ...]) -> None:
    """Keep held KEYS of TARGET as the target has them: no deactivation, no removal.

    The decision lasts until the object's directory record changes again;
    then its change is planned (and maybe held) as usual. KEYS are as
    `provisiond held TARGET` shows them.
    """
    _decide(ctx, target, keys, REJECTED)
