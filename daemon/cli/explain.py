"""``provisiond explain``: one user, for each target, from the state store."""

from __future__ import annotations

import json
import time

import click
from rich.markup import escape

from daemon import explain as explaining
from daemon.cli.common import fail, load_config, out, run_async
from daemon.explain import Explanation, UnknownUser
from daemon.service import open_store


def _when(at: float | None) -> str:
    return "never" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


@click.command()
@click.argument("user")
@click.option("--target", "only", metavar="T", help="Only this target.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def explain(ctx: click.Context, user: str, only: str | None, as_json: bool) -> None:
    """Explain USER (a username, an email or an id) for each target.

    In scope or not and why (the bound groups that grant it, or none;
    suspended; removed), what the directory says, what was last written and
    when, the pending change, the last error and next retry, held removals,
    and whether the user may sign in now. Read from the state store (the
    last committed cycle). An unknown user exits 1.
    """
    config = load_config(ctx)
    targets = config.settings.targets
    if only is not None:
        targets = [t for t in targets if t.name == only]
        if not targets:
            fail(f"no target named {only!r} in the configuration", 1)

    async def explain_() -> Explanation:
        store = await open_store(config)
        try:
            return await explaining.explain(
                store, user, targets, explaining.rules_of(config)
            )
        finally:
            await store.aclose()

    try:
        found = run_async(explain_)
    except UnknownUser as exc:
        fail(str(exc), 1)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
        return
    _print(found)


def _print(e: Explanation) -> None:
    say = out.print
    say(f"user {escape(e.username)} (id {escape(e.user_id)})", highlight=False)
    if e.directory is None:
        say("  directory: removed (no record in the last committed snapshot)")
    else:
        fields = ", ".join(f"{k}={v}" for k, v in e.directory.items() if k != "id")
        say(f"  directory: {escape(fields)}", highlight=False)
        say(f"  groups: {escape(', '.join(e.groups) or 'none')}", highlight=False)
    say(f"  snapshot: {e.snapshot_version or 'none committed yet'}", highlight=False)
    for t in e.targets:
        say(f"\n[bold]{escape(t.target)}[/]: {'in scope' if t.in_scope else 'not in scope'}")
        say(f"  scope: {escape(t.scope)}", highlight=False)
        say(f"  state: {t.state}" + (f" (remote id {escape(t.remote_id)})" if t.remote_id else ""),
            highlight=False)  # fmt: skip
        say(f"  last written: {_when(t.last_written_at)}", highlight=False)
        if t.pending:
            say(f"  pending ({t.pending_status}):", highlight=False)
            for line in t.pending:
                say(f"    {escape(line)}", highlight=False)
        else:
            say("  pending: nothing")
        if t.decision:
            say(f"  operator decision: {t.decision} by {escape(t.decided_by or 'unknown')} "
                f"at {_when(t.decided_at)}", highlight=False)  # fmt: skip
        if t.last_error:
            say(f"  last error: {escape(t.last_error)} (attempts {t.attempts})", highlight=False)
            say(f"  next retry: {_when(t.next_retry_at)}", highlight=False)
        say(f"  may sign in now: {escape(t.sign_in)}", highlight=False)
        for entry in t.log[:5]:
            what = ", ".join(entry.changes) or "-"
            extra = f" {entry.method} {entry.path} {entry.status}" if entry.method else ""
            by = f" by {entry.actor}" if entry.actor else ""
            say(f"    {_when(entry.at)} {entry.outcome}: {escape(what)}{escape(extra)}{escape(by)}",
                highlight=False)  # fmt: skip
