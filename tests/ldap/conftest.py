"""Fixtures: a fresh slapd per test, seeded, and ldap source options pointing at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.ldap import LdapOptions, LdapSource
from tests.ldap import seed
from tests.ldap.slapd import READER_DN, READER_PASSWORD, SLAPD, Slapd, start


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    """slapd with the OpenLDAP-shaped and the AD-shaped trees loaded."""
    if not SLAPD.exists():  # the Debian package is a test dependency
        pytest.skip("slapd is not installed (Debian package slapd)")
    work = tmp_path / "slapd"
    work.mkdir()
    server = start(work, size_limit=50)
    try:
        server.modify(seed.base_ldif() + seed.ad_ldif())
        yield server
    finally:
        server.stop()


@pytest.fixture
def context(tmp_path: Path) -> PluginContext:
    return PluginContext(config_dir=tmp_path, state_dir=tmp_path, secrets=SecretStore())


@pytest.fixture
def make_source(slapd: Slapd, tmp_path: Path, context: PluginContext) -> Callable[..., LdapSource]:
    """Build an ldap source bound as the size-limited reader; keywords override options."""
    (tmp_path / "bind.pw").write_text(READER_PASSWORD + "\n")

    def make(**overrides: Any) -> LdapSource:
        options: dict[str, Any] = {
            "url": slapd.url,
            "start_tls": False,
            "bind_dn": READER_DN,
            "bind_password_file": "bind.pw",
            "user_base": seed.PEOPLE,
            "group_base": seed.GROUPS,
            "page_size": 20,
        }
        options.update(overrides)
        return LdapSource(LdapOptions.model_validate(options), context)

    return make
