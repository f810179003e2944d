"""TOTP as a second factor: enrolment confirmed by a code, each time step once, a step of
drift either side, malformed input refused unchecked, a per-account throttle, and the
secret sealed at rest."""

from __future__ import annotations

import json
import re

import anyio
import pyotp
import pytest
from structlog.testing import capture_logs

from daemon.metrics import REGISTRY
from daemon.portal.mfa.factors import Factors, Outcome
from daemon.portal.mfa.keys import STORE_KEY_ID, MfaKey, MfaKeyError
from daemon.store import FactorRecord, Store
from daemon.store.sqlite import SqliteStore
from tests.mfa.conftest import FakeClock
from tests.store.backends import StoreFactory

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def code(at: float, secret: str = SECRET) -> str:
    return pyotp.TOTP(secret).at(at)


def wrong(at: float, secret: str = SECRET) -> str:
    """A six-digit code that is no code of the steps around ``at``."""
    near = {code(at + d, secret) for d in (-30, 0, 30)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


def mfa_count(factor: str, result: str) -> float:
    value = REGISTRY.get_sample_value("provisiond_mfa_total", {"factor": factor, "result": result})
    return value or 0.0


async def enrolled(factors: Factors, clock: FakeClock, user: str = "u1") -> None:
    assert await factors.confirm_totp(user, SECRET, code(clock.now)) is Outcome.SUCCESS


async def failures(factors: Factors, user: str = "u1") -> int:
    return await factors.store.count_failures(factors._throttle_key(user), 0.0)


async def test_enrolment_needs_a_right_code_and_seals_the_secret(
    factors: Factors, store: SqliteStore, clock: FakeClock
) -> None:
    before = mfa_count("totp", "enrolled")
    assert await factors.confirm_totp("u1", SECRET, wrong(clock.now)) is Outcome.FAILURE
    assert await store.factors("u1") == []
    assert await factors.kinds("u1") == frozenset()
    with capture_logs() as logged:
        assert await factors.confirm_totp("u1", SECRET, code(clock.now)) is Outcome.SUCCESS
    assert mfa_count("totp", "enrolled") == before + 1
    [record] = await store.factors("u1")
    assert (record.id, record.kind, record.created_at, record.used_at) == (
        "totp",
        "totp",
        clock.now,
        clock.now,
    )
    assert SECRET not in record.data and SECRET.lower() not in record.data
    assert json.loads(record.data)["last_step"] == int(clock.now // 30)
    assert await factors.kinds("u1") == frozenset({"totp"})
    [shown] = await factors.listing("u1")
    assert json.loads(shown.data) == {"last_step": int(clock.now // 30)}
    [line] = [e for e in logged if e["event"] == "mfa enrolled"]
    assert (line["user_id"], line["factor"]) == ("u1", "totp")
    # The enrolment code's step is used: the same code does not sign in.
    assert await factors.verify_totp("u1", code(clock.now)) is Outcome.REPLAYED


async def test_a_malformed_secret_is_not_enrolled(factors: Factors, clock: FakeClock) -> None:
    for secret in ("", "not base32!", "A" * 9, "A" * 200, "JBSWY3DP" + "1" * 8):
        assert await factors.confirm_totp("u1", secret, code(clock.now)) is Outcome.MALFORMED
    assert await factors.listing("u1") == []


async def test_a_right_code_is_accepted_once(factors: Factors, clock: FakeClock) -> None:
    await enrolled(factors, clock)
    clock.advance(30)
    success, replayed = mfa_count("totp", "success"), mfa_count("totp", "replayed")
    with capture_logs() as logged:
        assert await factors.verify_totp("u1", code(clock.now), client="192.0.2.7") is (
            Outcome.SUCCESS
        )
        assert await factors.verify_totp("u1", code(clock.now), client="192.0.2.7") is (
            Outcome.REPLAYED
        )
    assert mfa_count("totp", "success") == success + 1
    assert mfa_count("totp", "replayed") == replayed + 1
    used, failed = logged
    assert used == {
        "event": "mfa used",
        "user_id": "u1",
        "factor": "totp",
        "client": "192.0.2.7",
        "log_level": "info",
    }
    assert (failed["event"], failed["result"], failed["log_level"]) == (
        "mfa failed",
        "replayed",
        "warning",
    )
    [record] = await factors.store.factors("u1")
    assert record.used_at == clock.now


async def test_a_wrong_code_fails_and_counts(factors: Factors, clock: FakeClock) -> None:
    await enrolled(factors, clock)
    clock.advance(30)
    before = mfa_count("totp", "failure")
    assert await factors.verify_totp("u1", wrong(clock.now)) is Outcome.FAILURE
    assert mfa_count("totp", "failure") == before + 1
    assert await failures(factors) == 1
    # A user without a TOTP factor: refused too.
    assert await factors.verify_totp("u2", code(clock.now)) is Outcome.FAILURE


async def test_one_step_of_drift_either_side(factors: Factors, clock: FakeClock) -> None:
    await enrolled(factors, clock)
    clock.advance(90)
    # The phone is 30 s behind: the previous step's code still works.
    assert await factors.verify_totp("u1", code(clock.now - 30)) is Outcome.SUCCESS
    # The phone is 30 s ahead: the next step's code works ...
    assert await factors.verify_totp("u1", code(clock.now + 30)) is Outcome.SUCCESS
    # ... and then the current step's code is older than the last one used.
    assert await factors.verify_totp("u1", code(clock.now)) is Outcome.REPLAYED


async def test_a_code_beyond_the_drift_has_expired(factors: Factors, clock: FakeClock) -> None:
    await enrolled(factors, clock)
    clock.advance(120)
    assert await factors.verify_totp("u1", code(clock.now - 60)) is Outcome.FAILURE
    assert await factors.verify_totp("u1", code(clock.now + 60)) is Outcome.FAILURE
    assert await factors.verify_totp("u1", code(clock.now)) is Outcome.SUCCESS


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "      ",
        "abcdef",
        "12345",
        "1234567",
        "12345a",
        "\uff11\uff12\uff13\uff14\uff15\uff16",
        "1" * 10_240,
    ],
)
async def test_malformed_codes_are_refused_unchecked(
    factors: Factors, clock: FakeClock, typed: str
) -> None:
    await enrolled(factors, clock)
    clock.advance(30)
    before = mfa_count("totp", "failure")
    with capture_logs() as logged:
        assert await factors.verify_totp("u1", typed) is Outcome.MALFORMED
    [line] = logged
    assert (line["event"], line["result"], line["user_id"]) == ("mfa failed", "malformed", "u1")
    assert typed.strip() == "" or typed not in repr(line)
    assert mfa_count("totp", "failure") == before + 1
    # Not a guess: the account's budget of wrong codes is untouched, and the step is unused.
    assert await failures(factors) == 0
    assert await factors.verify_totp("u1", code(clock.now)) is Outcome.SUCCESS


async def test_blanks_inside_a_code_are_ignored(factors: Factors, clock: FakeClock) -> None:
    await enrolled(factors, clock)
    clock.advance(30)
    right = code(clock.now)
    assert await factors.verify_totp("u1", f" {right[:3]} {right[3:]}\n") is Outcome.SUCCESS


async def test_wrong_codes_throttle_the_account(factors: Factors, clock: FakeClock) -> None:
    await enrolled(factors, clock)
    await enrolled(factors, clock, user="u2")
    for _ in range(3):
        clock.advance(30)
        assert await factors.verify_totp("u1", wrong(clock.now)) is Outcome.FAILURE
    clock.advance(30)
    throttled = mfa_count("totp", "throttled")
    with capture_logs() as logged:
        assert await factors.verify_totp("u1", code(clock.now)) is Outcome.THROTTLED
    assert mfa_count("totp", "throttled") == throttled + 1
    assert logged[0]["result"] == "throttled"
    # Recovery codes share the account's budget; other accounts have their own.
    [recovery, *_] = await factors.new_recovery_codes("u1")
    assert await factors.use_recovery_code("u1", recovery) is Outcome.THROTTLED
    assert await factors.verify_totp("u2", code(clock.now)) is Outcome.SUCCESS
    # Once the failures age out of the window, a right code works and clears the count.
    clock.advance(600)
    assert await factors.verify_totp("u1", code(clock.now)) is Outcome.SUCCESS
    assert await failures(factors) == 0


async def test_a_replay_counts_against_the_budget(factors: Factors, clock: FakeClock) -> None:
    await enrolled(factors, clock)
    for _ in range(3):
        assert await factors.verify_totp("u1", code(clock.now)) is Outcome.REPLAYED
    clock.advance(30)
    assert await factors.verify_totp("u1", code(clock.now)) is Outcome.THROTTLED


async def test_racing_uses_of_one_code_on_two_stores_have_one_winner(
    store_factory: StoreFactory, key: MfaKey, clock: FakeClock
) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await one.set_meta(STORE_KEY_ID, key.id)
    replicas = [Factors(s, key, clock=clock, max_failures=100) for s in (one, two)]
    await enrolled(replicas[0], clock)
    for _ in range(3):
        clock.advance(30)
        right = code(clock.now)
        outcomes: list[Outcome] = []

        async def use(factors: Factors, right: str = right, into: list[Outcome] = outcomes) -> None:
            into.append(await factors.verify_totp("u1", right))

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(use, replicas[n % 2])
        assert sorted(outcomes) == sorted([Outcome.SUCCESS] + [Outcome.REPLAYED] * 5)


async def test_a_secret_copied_to_another_user_does_not_open(
    factors: Factors, store: Store, clock: FakeClock
) -> None:
    await enrolled(factors, clock)
    [record] = await store.factors("u1")
    await store.put_factor(FactorRecord("u2", "totp", "totp", "stolen", record.data, 1.0))
    clock.advance(30)
    with pytest.raises(MfaKeyError, match="does not open"):
        await factors.verify_totp("u2", code(clock.now))
    await store.put_factor(FactorRecord("u3", "totp", "totp", "odd", '{"secret": 1}', 1.0))
    with pytest.raises(MfaKeyError, match=r"user u3 .* mfa reset"):
        await factors.verify_totp("u3", code(clock.now))


async def test_no_code_or_secret_reaches_the_audit_log(factors: Factors, clock: FakeClock) -> None:
    typed: list[str] = []
    with capture_logs() as logged:
        typed.append(code(clock.now))
        await factors.confirm_totp("u1", SECRET, typed[-1])
        for step in range(1, 4):
            typed.append(code(clock.now + 30 * step))
            await factors.verify_totp("u1", typed[-1])
            typed.append(wrong(clock.now + 30 * step))
            await factors.verify_totp("u1", typed[-1])
        recovery = await factors.new_recovery_codes("u1")
        await factors.use_recovery_code("u1", recovery[0])
        await factors.use_recovery_code("u1", recovery[0])
    text = repr(logged)
    for value in [SECRET, *typed, *recovery, *(c.replace("-", "") for c in recovery)]:
        assert value not in text


def test_the_uri_and_the_qr_code(factors: Factors) -> None:
    uri = factors.totp_uri(SECRET, account="alice@example.com")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.issuer, parsed.name) == (
        SECRET,
        "provisiond",
        "alice@example.com",
    )
    assert (parsed.digits, parsed.interval) == (6, 30)
    svg = factors.qr_svg(uri)
    assert svg.startswith("<svg ") and svg.rstrip().endswith("</svg>")
    assert "<?xml" not in svg and "href" not in svg and "data:" not in svg
    assert "<script" not in svg and "url(" not in svg
    match = re.match(r'<svg width="(\d+)" height="(\d+)"', svg)
    assert match is not None
    assert match[1] == match[2] and 180 <= int(match[1]) <= 320
    # A longer account name makes a bigger symbol, still a sensible size.
    long = factors.qr_svg(factors.totp_uri(SECRET, account="x" * 120 + "@example.com"))
    size = re.match(r'<svg width="(\d+)"', long)
    assert size is not None and 180 <= int(size[1]) <= 400


def test_new_secrets_are_random_base32(factors: Factors) -> None:
    secrets_made = {factors.new_totp_secret() for _ in range(20)}
    assert len(secrets_made) == 20
    assert all(re.fullmatch(r"[A-Z2-7]{32}", s) for s in secrets_made)
