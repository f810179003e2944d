"""``provisiond sync --user/--group``: provisioning on demand, step by step."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import click
from rich.markup import escape

from daemon import logs
from daemon.changes import describe
from daemon.cli.common import Session, fail, out, run_async
from daemon.config import Config
from daemon.explain import find
from daemon.leadership import Leadership
from daemon.store import Key, Result, Store
from daemon.targets.base import Delta, Outcome


class UnknownObject(LookupError):
    """A user or group given on the command line that the directory does not hold."""


@dataclass
class Step:
    """One object's way to one target: scope, match or adopt, action, result."""

    target: str
    object: str
    scope: str
    match: str
    action: str
    result: str
    ok: bool


async def resolve(
    store: Store, users: Sequence[str], groups: Sequence[str]
) -> dict[Key, str]:
    """The keys the refs name, with a name to show; :class:`UnknownObject` for the unknown."""
    out_: dict[Key, str] = {}
    unknown: list[str] = []
    for ref in users:
        user_id, user = await find(store, ref) if ref.strip() else ("", None)
        if user is None:
            unknown.append(f"user {ref!r}")
        else:
            out_[("user", user_id)] = user.username
    known = await store.groups()
    for ref in groups:
        found = [g for g in known if ref in (g.id, g.name)]
        if len(found) != 1:
            unknown.append(f"group {ref!r}")
        else:
            out_[("group", found[0].id)] = found[0].name
    if unknown:
        raise UnknownObject(
            "not in the directory's last committed snapshot: " + ", ".join(unknown)
        )
    return out_


def run(config: Config, users: Sequence[str], groups: Sequence[str], as_json: bool) -> None:
    logs.configure(config.settings.logging.level, config.settings.logging.format)

    async def go() -> list[Step]:
        async with Session(config) as session:
            assert session.store is not None
            names = await resolve(session.store, users, groups)
            return await session.leading(lambda lead: _deliver(session, lead, names))

    try:
        steps = run_async(go)
    except UnknownObject as exc:
        fail(str(exc), 1)
    if as_json:
        click.echo(json.dumps([asdict(s) for s in steps], indent=2))
    else:
        for s in steps:
            mark = "[green]ok[/]" if s.ok else "[red]failed[/]"
            out.print(f"[bold]{escape(s.target)}[/] {escape(s.object)}: {mark}")
            for label, value in (("scope", s.scope), ("match", s.match), ("action", s.action),
                                 ("result", s.result)):  # fmt: skip
                out.print(f"  {label}: {escape(value)}", highlight=False)
    if any(not s.ok for s in steps):
        sys.exit(1)


async def _deliver(
    session: Session, leadership: Leadership | None, names: dict[Key, str]
) -> list[Step]:
    engine = session.engine(leadership)
    store = session.store
    assert store is not None
    delivered: dict[tuple[str, Key], tuple[Delta, Result, Outcome | None]] = {}

    def note(target: str, delta: Delta, result: Result, outcome: Outcome | None) -> None:
        delivered[(target, delta.key)] = (delta, result, outcome)

    engine.on_delivered = note
    await engine.cycle(only=frozenset(names))
    steps: list[Step] = []
    for slot in engine.targets:
        for key, name in names.items():
            label = f"{key[0]} {name} ({key[1]})"
            row = await store.target_object(slot.name, key)
            scope = _scope(key, None if row is None else row.active, row is not None)
            got = delivered.get((slot.name, key))
            if got is None:
                why = "nothing to send: the target is up to date" if row else "not sent"
                steps.append(Step(slot.name, label, scope, "-", why, "ok", True))
                continue
            delta, result, outcome = got
            if delta.remote_id:
                match = f"linked to remote id {delta.remote_id}"
            elif result.remote_id:
                match = f"matched or created: remote id {result.remote_id}"
            else:
                match = "no remote object"
            action = "; ".join(describe(c) for c in delta.changes) or "nothing to send"
            if outcome is not None and outcome.requests:
                method, path, status = outcome.requests[-1]
                action += f" ({method} {path} {status})"
            result_text = "delivered" if result.ok else f"failed: {result.error}"
            steps.append(Step(slot.name, label, scope, match, action, result_text, result.ok))
    return steps


def _scope(key: Key, active: bool | None, known: bool) -> str:
    """The object's scope for the target, from its recorded desired state."""
    if not known:
        return "not in the target's scope (in no bound group)"
    if key[0] == "group":
        return "a group bound to the target"
    if active:
        return "in scope: active"
    return "out of scope or suspended: deactivated or removed"
