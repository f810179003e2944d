"""``provisiond mfa status`` and ``provisiond mfa reset`` on a real configuration and store,
without the MFA key file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml
from click.testing import CliRunner, Result

from daemon import logs
from daemon.cli import main
from daemon.model import User, content_hash
from daemon.portal.mfa.factors import Factors, Outcome
from daemon.portal.mfa.keys import GENERATED_KEY_NAME, STORE_KEY_ID, load_mfa_key
from daemon.secrets import SecretStore
from daemon.store import FactorRecord, SessionRecord
from daemon.store.sqlite import SqliteStore
from tests.mfa.conftest import FakeClock
from tests.mfa.test_totp import SECRET, code

ALICE = User(id="u-alice", username="alice", email="alice@example.org")
BOB = User(id="u-bob", username="bob", email="bob@example.org")


@pytest.fixture(autouse=True)
def _no_log_handler_left() -> Iterator[None]:
    yield
    logs.unconfigure()  # `mfa reset` configures logging onto the runner's stream


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "provisiond.yaml"
    settings = {
        "source": {"kind": "file", "options": {"path": "directory.yaml"}},
        "state": {"path": "state/provisiond.db"},
        "targets": [],
        "logging": {"level": "info", "format": "json"},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


async def _seed(db: Path, clock: FakeClock) -> list[str]:
    """Alice with TOTP, a passkey, recovery codes and two sessions; Bob with nothing; and
    factors of an id the directory no longer has. Alice's recovery codes are returned."""
    db.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(db)
    await store.open()
    try:
        users = [((("user", u.id)), content_hash(u), u) for u in (ALICE, BOB)]
        await store.commit("v1", users, [], {})
        key = await load_mfa_key(None, db.parent, store, SecretStore())
        factors = Factors(store, key, clock=clock)
        assert await factors.confirm_totp(ALICE.id, SECRET, code(clock.now)) is Outcome.SUCCESS
        await store.put_factor(
            FactorRecord(ALICE.id, "cred-1", "passkey", "Work key", '{"c": 1}', clock.now + 5)
        )
        codes = await factors.new_recovery_codes(ALICE.id)
        assert await factors.use_recovery_code(ALICE.id, codes[0]) is Outcome.SUCCESS
        await store.put_factor(FactorRecord("u-gone", "totp", "totp", "old phone", "{}", 1.0))
        for n in range(2):
            await store.put_session(
                SessionRecord(f"s{n}", f"idx{n}", ALICE.id, "{}", clock.now, clock.now + 3600),
                clock.now,
                per_user=5,
            )
        await store.put_session(
            SessionRecord("s-bob", "idx-bob", BOB.id, "{}", clock.now, clock.now + 3600),
            clock.now,
            per_user=5,
        )
    finally:
        await store.aclose()
    (db.parent / GENERATED_KEY_NAME).unlink()  # status and reset must not need it
    return codes[1:]


@pytest.fixture
def seeded(config: Path, clock: FakeClock) -> list[str]:
    return anyio.run(_seed, config.parent / "state" / "provisiond.db", clock)


def cli(config: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["-c", str(config), "mfa", *args], input=stdin)


def state(config: Path) -> SqliteStore:
    return SqliteStore(config.parent / "state" / "provisiond.db")


async def _look(db: SqliteStore, user_id: str) -> tuple[list[FactorRecord], bool, str | None]:
    await db.open()
    try:
        return (
            await db.factors(user_id),
            await db.get_session("s-bob") is not None,
            await db.get_meta(STORE_KEY_ID),
        )
    finally:
        await db.aclose()


def test_status_of_a_user_by_name_email_or_id(config: Path, seeded: list[str]) -> None:
    for name in ("alice", "ALICE@example.org", "u-alice"):
        result = cli(config, "status", name, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["user"] == {
            "id": "u-alice",
            "username": "alice",
            "email": "alice@example.org",
            "in_directory": True,
        }
        assert [(f["kind"], f["name"]) for f in doc["factors"]] == [
            ("totp", "Authenticator app"),
            ("passkey", "Work key"),
        ]
        assert doc["factors"][0]["created"] == "2027-01-15T08:00:00Z"
        assert doc["factors"][1]["last_used"] is None
        assert doc["recovery_codes_left"] == 9
    text = cli(config, "status", "alice").stdout
    assert "alice <alice@example.org> (id u-alice)" in text
    assert "Work key" in text and "never" in text and "recovery codes left: 9" in text
    for secret in (SECRET, *seeded):
        assert secret not in text
    bob = cli(config, "status", "bob")
    assert bob.exit_code == 0
    assert "second factors: none" in bob.stdout and "recovery codes left: 0" in bob.stdout


def test_status_of_everyone(config: Path, seeded: list[str]) -> None:
    doc = json.loads(cli(config, "status", "--json").stdout)
    assert [(r["user"]["id"], r["user"]["in_directory"], r["factors"]) for r in doc["users"]] == [
        ("u-alice", True, 11),
        ("u-gone", False, 1),
    ]
    text = cli(config, "status").stdout
    assert "u-alice" in text and "alice@example.org" in text and "u-gone" in text


def test_an_unknown_user_is_an_error(config: Path, seeded: list[str]) -> None:
    for command in ("status", "reset"):
        result = cli(config, command, "mallory")
        assert result.exit_code == 1
        assert "no user 'mallory'" in result.stderr
        assert "username, email address or id" in result.stderr


def test_reset_deletes_the_factors_and_ends_the_sessions(config: Path, seeded: list[str]) -> None:
    result = cli(config, "reset", "alice@example.org")
    assert result.exit_code == 0, result.output
    assert " ".join(result.stdout.split()) == (
        "deleted 11 factor(s) of alice <alice@example.org> (id u-alice); ended 2 session(s)"
    )
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [audit] = [line for line in lines if line["event"] == "mfa reset"]
    assert (audit["logger"], audit["user_id"], audit["factors"]) == (
        "provisiond.audit",
        "u-alice",
        11,
    )
    assert audit["kinds"] == "passkey,recovery,totp" and audit["by"] == "provisiond mfa reset"
    factors, bob_signed_in, key_id = anyio.run(_look, state(config), "u-alice")
    assert factors == [] and bob_signed_in and key_id
    assert not (config.parent / "state" / GENERATED_KEY_NAME).exists()
    again = cli(config, "reset", "alice")
    assert " ".join(again.stdout.split()) == (
        "alice <alice@example.org> (id u-alice) had no second factors; ended 0 session(s)"
    )


def test_reset_of_a_user_gone_from_the_directory(config: Path, seeded: list[str]) -> None:
    result = cli(config, "reset", "u-gone")
    assert result.exit_code == 0, result.output
    assert "deleted 1 factor(s) of u-gone (not in the directory)" in result.stdout
    assert cli(config, "status", "u-gone").exit_code == 1


def test_reset_all_forgets_the_key(config: Path, seeded: list[str], tmp_path: Path) -> None:
    assert cli(config, "reset", "--all", "alice").exit_code == 2
    assert cli(config, "reset").exit_code == 2
    refused = cli(config, "reset", "--all", stdin="n\n")
    assert refused.exit_code == 1
    assert anyio.run(_look, state(config), "u-alice")[0] != []
    result = cli(config, "reset", "--all", "--yes")
    assert result.exit_code == 0, result.output
    assert "deleted 12 factor(s) of 2 user(s) and ended 2 session(s)" in " ".join(
        result.stdout.split()
    )
    factors, _, key_id = anyio.run(_look, state(config), "u-alice")
    assert factors == [] and key_id == ""
    assert json.loads(cli(config, "status", "--json").stdout) == {"users": []}

    async def start_with_a_new_key() -> str | None:
        db = state(config)
        await db.open()
        try:
            await load_mfa_key(None, config.parent / "state", db, SecretStore())
            return await db.get_meta(STORE_KEY_ID)
        finally:
            await db.aclose()

    assert anyio.run(start_with_a_new_key)
