"""``provisiond mfa status`` and ``provisiond mfa reset``: users' second factors, for operators.

Neither needs the MFA key file: status reads what the store says of each
factor (never a secret), and reset deletes. A user is named by username,
email address or directory id, looked up in the committed directory
snapshot; an id that is no longer in the directory but still has factors is
accepted too, so a departed user's factors can be reset.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import click
from rich.table import Table

from daemon import logs
from daemon.cli.common import fail, load_config, out, run_async
from daemon.model import User
from daemon.portal.mfa.factors import reset_factors
from daemon.portal.mfa.keys import STORE_KEY_ID
from daemon.service import open_store
from daemon.store import FactorRecord, Store


@dataclass(frozen=True, slots=True)
class _Who:
    id: str
    user: User | None  # None: not in the directory (any more), but it has factors

    @property
    def label(self) -> str:
        if self.user is None:
            return f"{self.id} (not in the directory)"
        return f"{self.user.username} <{self.user.email}> (id {self.id})"

    def doc(self) -> dict[str, Any]:
        if self.user is None:
            return {"id": self.id, "username": None, "email": None, "in_directory": False}
        return {
            "id": self.id,
            "username": self.user.username,
            "email": self.user.email,
            "in_directory": True,
        }


async def _resolve(store: Store, name: str) -> _Who | None:
    user = await store.find_user(name)
    if user is None:
        found = (await store.records([("user", name)])).get(("user", name))
        user = found if isinstance(found, User) else None
    if user is not None:
        return _Who(user.id, user)
    if await store.factors(name):
        return _Who(name, None)
    return None


def _unknown(name: str) -> str:
    return (
        f"no user {name!r}: it is no username, email address or id in the committed directory "
        "snapshot, and the state store keeps no second factors under that id"
    )


def _when(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _factor_doc(record: FactorRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind,
        "name": record.name,
        "created": _when(record.created_at),
        "last_used": _when(record.used_at),
    }


@click.group()
def mfa() -> None:
    """Second factors of portal users: what each has, and a reset for a lost one."""


@mfa.command()
@click.argument("user", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """List USER's second factors and unused recovery codes (never a secret).

    USER is a username, email address or directory id. Without USER: every
    user with a factor, and how many they have.
    """
    config = load_config(ctx)

    async def everyone() -> list[dict[str, Any]]:
        store = await open_store(config)
        try:
            rows = []
            for user_id, count in await store.factor_users():
                found = (await store.records([("user", user_id)])).get(("user", user_id))
                who = _Who(user_id, found if isinstance(found, User) else None)
                rows.append({"user": who.doc(), "factors": count})
            return rows
        finally:
            await store.aclose()

    async def one(name: str) -> dict[str, Any] | None:
        store = await open_store(config)
        try:
            who = await _resolve(store, name)
            if who is None:
                return None
            records = await store.factors(who.id)
        finally:
            await store.aclose()
        return {
            "user": who.doc(),
            "label": who.label,
            "factors": [_factor_doc(r) for r in records if r.kind != "recovery"],
            "recovery_codes_left": sum(r.kind == "recovery" for r in records),
        }

    if user is None:
        rows = run_async(everyone)
        if as_json:
            click.echo(json.dumps({"users": rows}, indent=2))
            return
        if not rows:
            out.print("no user has a second factor")
            return
        table = Table()
        for col in ("user", "username", "email", "factors"):
            table.add_column(col)
        for row in rows:
            u = row["user"]
            table.add_row(u["id"], u["username"] or "-", u["email"] or "-", str(row["factors"]))
        out.print(table)
        return

    doc = run_async(lambda: one(user))
    if doc is None:
        fail(_unknown(user), code=1)
    label = doc.pop("label")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    out.print(f"user: {label}", highlight=False)
    if not doc["factors"]:
        out.print("second factors: none")
    else:
        table = Table()
        for col in ("kind", "name", "created", "last used"):
            table.add_column(col)
        for f in doc["factors"]:
            table.add_row(f["kind"], f["name"], f["created"], f["last_used"] or "never")
        out.print(table)
    out.print(f"recovery codes left: {doc['recovery_codes_left']}")


@mfa.command()
@click.argument("user", required=False)
@click.option(
    "--all",
    "everyone",
    is_flag=True,
    help="Every user's factors, and forget the MFA key (after the key file is lost).",
)
@click.option("--yes", is_flag=True, help="With --all: do not ask for confirmation.")
@click.pass_context
def reset(ctx: click.Context, user: str | None, everyone: bool, yes: bool) -> None:
    """Delete USER's second factors and end their sessions.

    For a user who lost their phone or keys: at the next sign-in they enrol
    again (where a second factor is required). USER is a username, email
    address or directory id. With --all instead of USER: every user's factors,
    and the store forgets the MFA key id, so a new key file is accepted.
    """
    if everyone == (user is not None):
        fail("name one USER, or pass --all (and no USER)")
    config = load_config(ctx)
    if everyone and not yes:
        click.confirm("Delete the second factors of every user and end their sessions?", abort=True)
    logs.configure(config.settings.logging.level, config.settings.logging.format)

    async def reset_one(name: str) -> tuple[_Who, int, int] | None:
        store = await open_store(config)
        try:
            who = await _resolve(store, name)
            if who is None:
                return None
            factors = await reset_factors(store, who.id, by="provisiond mfa reset")
            sessions = await store.delete_user_sessions(who.id)
            return who, factors, sessions
        finally:
            await store.aclose()

    async def reset_all() -> tuple[int, int, int]:
        store = await open_store(config)
        try:
            users = factors = sessions = 0
            for user_id, _ in await store.factor_users():
                factors += await reset_factors(store, user_id, by="provisiond mfa reset --all")
                sessions += await store.delete_user_sessions(user_id)
                users += 1
            # An empty id: the next start takes whatever key file it finds.
            await store.set_meta(STORE_KEY_ID, "")
            return users, factors, sessions
        finally:
            await store.aclose()

    if everyone:
        users, factors, sessions = run_async(reset_all)
        out.print(
            f"deleted {factors} factor(s) of {users} user(s) and ended {sessions} session(s); "
            "the store no longer remembers an MFA key: the next start takes the key file it finds"
        )
        return
    assert user is not None
    done = run_async(lambda: reset_one(user))
    if done is None:
        fail(_unknown(user), code=1)
    who, factors, sessions = done
    if factors == 0:
        out.print(f"{who.label} had no second factors; ", end="", highlight=False)
    else:
        out.print(f"deleted {factors} factor(s) of {who.label}; ", end="", highlight=False)
    out.print(f"ended {sessions} session(s)", highlight=False)
