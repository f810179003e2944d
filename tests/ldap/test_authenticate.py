"""Password checks against slapd: right password, and the refusals that look alike."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daemon.sources.ldap import LdapSource, auth
from tests.ldap import seed
from tests.ldap.slapd import Slapd

MakeSource = Callable[..., LdapSource]


async def test_right_password_is_accepted(make_source: MakeSource) -> None:
    assert await make_source().authenticate("alice", seed.PASSWORDS["alice"]) is True


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "wrong-password"),  # wrong password
        ("alice", seed.PASSWORDS["bob"]),  # someone else's password
        ("alice", ""),  # empty: would be an unauthenticated bind (RFC 4513)
        ("nobody", "whatever-password"),  # unknown user
        ("*", seed.PASSWORDS["alice"]),  # a wildcard must not match alice
        ("alice)(uid=*", seed.PASSWORDS["alice"]),  # filter injection
        ("", seed.PASSWORDS["alice"]),
    ],
)
async def test_refusals_look_the_same(
    make_source: MakeSource, username: str, password: str
) -> None:
    assert await make_source().authenticate(username, password) is False


async def test_empty_password_never_reaches_a_bind(
    make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("contacted the directory")

    bind_as = auth.bind_as
    monkeypatch.setattr(auth, "connect", no_network)
    monkeypatch.setattr(auth, "connection", no_network)
    monkeypatch.setattr(auth, "bind_as", no_network)
    assert await make_source().authenticate("alice", "") is False
    assert auth.authenticate_sync(None, None, "svc", "alice", "") is False  # type: ignore[arg-type]
    # The last line of defence holds on its own too.
    assert bind_as(None, "uid=alice,dc=x", "") is False  # type: ignore[arg-type]


async def test_suspended_user_is_refused(make_source: MakeSource, slapd: Slapd) -> None:
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nadd: pwdAccountLockedTime\n"
        "pwdAccountLockedTime: 000001010000Z\n"
    )
    assert await make_source().authenticate("alice", seed.PASSWORDS["alice"]) is False
