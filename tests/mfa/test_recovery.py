"""Recovery codes (ten, each once, kept as keyed digests), what counts as a second factor,
and removing or resetting factors."""

from __future__ import annotations

import re

import anyio
from structlog.testing import capture_logs

from daemon.portal.mfa.factors import Factors, Outcome
from daemon.store import FactorRecord
from daemon.store.sqlite import SqliteStore
from tests.mfa.conftest import FakeClock
from tests.mfa.test_totp import SECRET, code, mfa_count


async def test_ten_codes_each_works_once(factors: Factors, store: SqliteStore) -> None:
    enrolled = mfa_count("recovery", "enrolled")
    codes = await factors.new_recovery_codes("u1")
    assert mfa_count("recovery", "enrolled") == enrolled + 1
    assert len(codes) == len(set(codes)) == 10
    assert all(re.fullmatch(r"[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}", c) for c in codes)
    records = await store.factors("u1")
    assert {r.kind for r in records} == {"recovery"} and len(records) == 10
    assert all(re.fullmatch(r"recovery:[0-9a-f]{64}", r.id) for r in records)
    stored = repr(records)
    assert not any(c in stored or c.replace("-", "") in stored for c in codes)
    assert await factors.recovery_codes_left("u1") == 10

    success, failure = mfa_count("recovery", "success"), mfa_count("recovery", "failure")
    with capture_logs() as logged:
        for n, one in enumerate(codes):
            assert await factors.use_recovery_code("u1", one, client="192.0.2.9") is Outcome.SUCCESS
            assert await factors.recovery_codes_left("u1") == 9 - n
        assert await factors.use_recovery_code("u1", codes[0]) is Outcome.FAILURE
    assert mfa_count("recovery", "success") == success + 10
    assert mfa_count("recovery", "failure") == failure + 1
    assert [e["event"] for e in logged] == ["mfa used"] * 10 + ["mfa failed"]
    assert logged[0]["client"] == "192.0.2.9" and logged[-1]["factor"] == "recovery"


async def test_a_reused_code_is_refused_and_counted(factors: Factors) -> None:
    codes = await factors.new_recovery_codes("u1")
    assert await factors.use_recovery_code("u1", codes[3]) is Outcome.SUCCESS
    for _ in range(3):
        assert await factors.use_recovery_code("u1", codes[3]) is Outcome.FAILURE
    # Three failures throttle the account (max_failures=3): even a fresh code waits.
    assert await factors.use_recovery_code("u1", codes[4]) is Outcome.THROTTLED
    assert await factors.recovery_codes_left("u1") == 9


async def test_racing_uses_of_one_code_have_one_winner(factors: Factors) -> None:
    [one, *_] = await factors.new_recovery_codes("u1")
    outcomes: list[Outcome] = []

    async def use() -> None:
        outcomes.append(await factors.use_recovery_code("u1", one))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(use)
    assert sorted(outcomes) == [Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS]


async def test_case_blanks_and_dashes_do_not_matter(factors: Factors) -> None:
    codes = await factors.new_recovery_codes("u1")
    typed = [
        codes[0].upper(),
        codes[1].replace("-", ""),
        " " + codes[2].replace("-", " ") + "\n",
        codes[3].replace("-", " - ").title(),
    ]
    for one in typed:
        assert await factors.use_recovery_code("u1", one) is Outcome.SUCCESS


async def test_malformed_codes_are_refused_unchecked(factors: Factors) -> None:
    codes = await factors.new_recovery_codes("u1")
    for typed in (
        "",
        "abcd-efgh",
        codes[0] + "a",
        "abcd-efgh-ijk1",
        "abcd_efgh_ijkl",
        "x" * 10_000,
    ):
        assert await factors.use_recovery_code("u1", typed) is Outcome.MALFORMED
    assert await factors.store.count_failures(factors._throttle_key("u1"), 0.0) == 0


async def test_codes_are_per_user(factors: Factors) -> None:
    mine = await factors.new_recovery_codes("u1")
    await factors.new_recovery_codes("u2")
    assert await factors.use_recovery_code("u2", mine[0]) is Outcome.FAILURE
    assert await factors.use_recovery_code("u1", mine[0]) is Outcome.SUCCESS


async def test_new_codes_replace_the_old_ones(factors: Factors, clock: FakeClock) -> None:
    assert await factors.confirm_totp("u1", SECRET, code(clock.now)) is Outcome.SUCCESS
    old = await factors.new_recovery_codes("u1")
    new = await factors.new_recovery_codes("u1")
    assert not set(old) & set(new)
    assert await factors.recovery_codes_left("u1") == 10
    assert await factors.use_recovery_code("u1", old[0]) is Outcome.FAILURE
    assert await factors.use_recovery_code("u1", new[0]) is Outcome.SUCCESS
    assert await factors.kinds("u1") == frozenset({"totp"})  # the TOTP factor stays


async def test_what_counts_as_a_second_factor(factors: Factors, store: SqliteStore) -> None:
    await factors.new_recovery_codes("u1")
    assert await factors.kinds("u1") == frozenset()
    await store.put_factor(FactorRecord("u1", "cred-1", "passkey", "YubiKey", "{}", 5.0))
    assert await factors.kinds("u1") == frozenset({"passkey"})
    [passkey] = [f for f in await factors.listing("u1") if f.kind == "passkey"]
    assert passkey.data == "{}" and passkey.name == "YubiKey"


async def test_remove_one_factor(factors: Factors, store: SqliteStore, clock: FakeClock) -> None:
    assert await factors.confirm_totp("u1", SECRET, code(clock.now)) is Outcome.SUCCESS
    await store.put_factor(FactorRecord("u1", "cred-1", "passkey", "YubiKey", "{}", 5.0))
    removed = mfa_count("totp", "removed")
    with capture_logs() as logged:
        assert await factors.remove("u1", "totp", client="192.0.2.1") is True
        assert await factors.remove("u1", "totp") is False
        assert await factors.remove("u2", "cred-1") is False
    assert mfa_count("totp", "removed") == removed + 1
    assert logged == [
        {
            "event": "mfa removed",
            "user_id": "u1",
            "factor": "totp",
            "client": "192.0.2.1",
            "log_level": "info",
        }
    ]
    assert await factors.kinds("u1") == frozenset({"passkey"})
    clock.advance(30)
    assert await factors.verify_totp("u1", code(clock.now)) is Outcome.FAILURE


async def test_reset_removes_everything(
    factors: Factors, store: SqliteStore, clock: FakeClock
) -> None:
    assert await factors.confirm_totp("u1", SECRET, code(clock.now)) is Outcome.SUCCESS
    codes = await factors.new_recovery_codes("u1")
    await store.put_factor(FactorRecord("u1", "cred-1", "passkey", "YubiKey", "{}", 5.0))
    await factors.new_recovery_codes("u2")
    before = {k: mfa_count(k, "reset") for k in ("totp", "passkey", "recovery")}
    with capture_logs() as logged:
        assert await factors.reset("u1", by="test") == 12
    assert {k: mfa_count(k, "reset") - before[k] for k in before} == {
        "totp": 1,
        "passkey": 1,
        "recovery": 1,
    }
    [line] = logged
    assert (line["event"], line["user_id"], line["factors"], line["by"]) == (
        "mfa reset",
        "u1",
        12,
        "test",
    )
    assert await factors.listing("u1") == []
    assert await factors.use_recovery_code("u1", codes[0]) is Outcome.FAILURE
    assert await factors.recovery_codes_left("u2") == 10
    assert await factors.reset("u1") == 0
