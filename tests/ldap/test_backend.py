"""Choosing the read backend, and python-ldap's completion of AD value ranges.

slapd never splits values into ranges, so the range rules are tested on the
function that applies them, fed as AD answers.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from pydantic import ValidationError

from daemon.sources.base import SourceError
from daemon.sources.ldap import LdapOptions
from daemon.sources.ldap.backend import chosen_backend, fast_backend_installed

BASE: dict[str, Any] = {
    "url": "ldaps://ldap.example.org",
    "bind_dn": "cn=svc,dc=example,dc=org",
    "bind_password_file": "bind.pw",
    "user_base": "ou=people,dc=example,dc=org",
}


def test_auto_takes_python_ldap_when_installed() -> None:
    options = LdapOptions.model_validate(BASE)
    assert options.backend == "auto"
    assert chosen_backend(options) == ("python-ldap" if fast_backend_installed() else "ldap3")
    assert chosen_backend(LdapOptions.model_validate({**BASE, "backend": "ldap3"})) == "ldap3"


def test_auto_falls_back_to_ldap3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert chosen_backend(LdapOptions.model_validate(BASE)) == "ldap3"


def test_naming_a_missing_backend_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValidationError, match="python-ldap is not installed"):
        LdapOptions.model_validate({**BASE, "backend": "python-ldap"})
    with pytest.raises(ValidationError, match="backend"):
        LdapOptions.model_validate({**BASE, "backend": "bonsai"})


needs_python_ldap = pytest.mark.skipif(
    not fast_backend_installed(), reason="python-ldap is not installed"
)


@needs_python_ldap
def test_ranges_are_fetched_until_the_last() -> None:
    from daemon.sources.ldap.libldap import complete_ranges

    asked: list[str] = []
    answers = {
        "member;range=2-*": {"member;range=2-3": [b"c", b"d"]},
        "member;range=4-*": {"member;range=4-*": [b"e"]},
    }

    def fetch(wanted: str) -> dict[str, list[bytes]]:
        asked.append(wanted)
        return answers[wanted]

    values = {"cn": [b"big"], "member;range=0-1": [b"a", b"b"]}
    complete_ranges(values, fetch)
    assert values == {"cn": [b"big"], "member": [b"a", b"b", b"c", b"d", b"e"]}
    assert asked == ["member;range=2-*", "member;range=4-*"]


@needs_python_ldap
@pytest.mark.parametrize(
    "answer",
    [
        {},  # the next range never comes: the group would lose members
        {"member;range=0-1": [b"a", b"b"]},  # the same range again: would loop forever
        {"member;range=9-*": [b"z"]},  # a gap
    ],
)
def test_a_range_that_does_not_follow_fails_the_read(answer: dict[str, list[bytes]]) -> None:
    from daemon.sources.ldap.libldap import complete_ranges

    with pytest.raises(SourceError, match="read was discarded"):
        complete_ranges({"member;range=0-1": [b"a", b"b"]}, lambda wanted: answer)
