"""A wrong service password must not lock the account (slapd with a ppolicy lockout policy).

The policy locks an account for good after five refused binds, as the
directory that found the defect did; provisiond must stop before that, and
bind again as soon as the password file changes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from daemon.sources.base import SourceError
from daemon.sources.ldap import LdapSource
from daemon.sources.ldap.bindguard import STATE_FILE
from tests.ldap import seed
from tests.ldap.slapd import READER_DN, READER_PASSWORD, Slapd

MakeSource = Callable[..., LdapSource]
WRONG = "wrong-password-987"


def failures(slapd: Slapd) -> tuple[int, bool]:
    """The refused binds ppolicy counted for the reader, and whether it is locked."""
    with slapd.admin() as conn:
        conn.search(
            READER_DN, "(objectClass=*)", attributes=["pwdFailureTime", "pwdAccountLockedTime"]
        )
        attrs = conn.response[0]["attributes"]
    return len(attrs.get("pwdFailureTime") or []), bool(attrs.get("pwdAccountLockedTime"))


@pytest.fixture
def lockout(slapd: Slapd) -> Slapd:
    slapd.modify(seed.lockout_policy_ldif(max_failure=5))
    return slapd


async def test_a_wrong_password_does_not_lock_the_account_and_a_fixed_file_recovers(
    make_source: MakeSource, lockout: Slapd, tmp_path: Path
) -> None:
    pwfile = tmp_path / "bind.pw"
    pwfile.write_text(WRONG)
    source = make_source(bind_retry_limit=3, bind_retry_after=0.05)
    errors: list[str] = []
    for _ in range(10):  # polls, each after any backoff has passed
        with pytest.raises(SourceError) as caught:
            await source.fetch(None)
        errors.append(str(caught.value))
        await anyio.sleep(0.15)

    assert failures(lockout) == (3, False)
    assert "invalidCredentials" in errors[0] and "next attempt at" in errors[0]
    last = errors[-1]
    assert "bind_retry_limit 3" in last and str(pwfile) in last and READER_DN in last
    assert all(WRONG not in e for e in errors)
    assert source.status() == {
        "bind_refusals": 3,
        "bind_retry_limit": 3,
        "bind_blocked_until": None,
        "bind_stopped": True,
    }
    # check (and a restarted daemon, reading the count from the state directory) binds no more.
    with pytest.raises(SourceError, match="not binding again"):
        await make_source().check()
    assert failures(lockout) == (3, False)
    assert json.loads((tmp_path / STATE_FILE).read_text())

    pwfile.write_text(READER_PASSWORD)
    snapshot = await source.fetch(None)
    assert snapshot is not None and snapshot.users
    assert not (tmp_path / STATE_FILE).exists()
    assert source.status()["bind_refusals"] == 0


async def test_binds_back_off_between_refusals(
    make_source: MakeSource, lockout: Slapd, tmp_path: Path
) -> None:
    (tmp_path / "bind.pw").write_text(WRONG)
    source = make_source(bind_retry_limit=5, bind_retry_after=60)
    with pytest.raises(SourceError, match="invalidCredentials"):
        await source.fetch(None)
    for _ in range(5):
        with pytest.raises(SourceError, match=r"next attempt at .* \(in 60 s\)"):
            await source.fetch(None)
    assert failures(lockout) == (1, False)
    assert source.status()["bind_blocked_until"] > time.time() + 50
    # Touching the file is the operator's way to say "try again now".
    (tmp_path / "bind.pw").write_text(WRONG + "x")
    with pytest.raises(SourceError, match="invalidCredentials"):
        await source.fetch(None)
    assert failures(lockout) == (2, False)


async def test_portal_sign_ins_spend_no_attempts_while_binds_wait(
    make_source: MakeSource, lockout: Slapd, tmp_path: Path
) -> None:
    (tmp_path / "bind.pw").write_text(WRONG)
    source = make_source(bind_retry_limit=2, bind_retry_after=60)
    for _ in range(6):
        with pytest.raises(SourceError):
            await source.authenticate("alice", seed.PASSWORDS["alice"])
    assert failures(lockout) == (1, False)


def test_a_second_bind_waits_for_the_first_with_an_untried_password(tmp_path: Path) -> None:
    """The two syncrepl searches bind at once at start: the second waits, it does not fail.

    With a refused first bind, the second does not bind at all (one attempt spent, not two).
    """
    import threading

    from daemon.sources.ldap.bindguard import BindGuard
    from daemon.sources.ldap.directory import BindRefused

    password = tmp_path / "pw"
    password.write_text("secret\n")

    def guard() -> BindGuard:
        return BindGuard(
            url="ldap://x", bind_dn="cn=r", password_file=password, limit=3, wait=60.0,
            state_dir=tmp_path,
        )  # fmt: skip

    def race(g: BindGuard, first: Callable[[], None]) -> list[str]:
        entered, outcomes = threading.Event(), []

        def one() -> None:
            with g.binding():
                entered.set()
                first()

        def two() -> None:
            entered.wait()
            try:
                with g.binding():
                    outcomes.append("bound")
            except SourceError as exc:
                outcomes.append(str(exc))

        t1, t2 = threading.Thread(target=lambda: _quiet(one)), threading.Thread(target=two)
        t1.start(), t2.start()
        t1.join(5), t2.join(5)
        return outcomes

    def slow_ok() -> None:
        time.sleep(0.3)

    def slow_refused() -> None:
        time.sleep(0.3)
        raise BindRefused("refused")

    assert race(guard(), slow_ok) == ["bound"]
    refused = guard()
    (outcome,) = race(refused, slow_refused)
    assert "refused" in outcome and refused.refusals == 1


def _quiet(func: Callable[[], None]) -> None:
    with contextlib.suppress(SourceError):
        func()
