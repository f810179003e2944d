"""Fixtures: a fresh slapd per test, seeded, and ldap source options pointing at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.ldap import LdapOptions, LdapSource
from daemon.sources.ldap.backend import Backend, fast_backend_installed
from tests.ldap import seed
from tests.ldap.slapd import SLAPD, Slapd, start


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


BACKENDS: list[Backend] = ["ldap3", "python-ldap"]


def _skip_if_missing(backend: str) -> None:
    if backend == "python-ldap" and not fast_backend_installed():
        pytest.skip("python-ldap is not installed (ldap-fast extra)")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each read backend in turn; python-ldap only where it is installed."""
    name: Backend = request.param
    _skip_if_missing(name)
    return name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test here that uses ``make_source`` runs once per backend."""
    if "make_source" in metafunc.fixturenames:
        metafunc.parametrize("make_source", BACKENDS, indirect=True)


def _maker(
    slapd: Slapd, tmp_path: Path, context: PluginContext, backend: str
) -> Callable[..., LdapSource]:
    # The password file is written once: a test may change it before it makes a source.
    defaults = seed.reader_options(slapd, tmp_path, page_size=20, backend=backend)

    def make(**overrides: Any) -> LdapSource:
        options = {**defaults, **overrides}
        return LdapSource(LdapOptions.model_validate(options), context)

    return make


@pytest.fixture
def make_source(
    slapd: Slapd, tmp_path: Path, context: PluginContext, request: pytest.FixtureRequest
) -> Callable[..., LdapSource]:
    """Build an ldap source bound as the size-limited reader; keywords override options.

    Under tests/ldap it is parametrized with each backend; imported elsewhere
    it uses ``backend: auto``.
    """
    backend: str = getattr(request, "param", "auto")
    _skip_if_missing(backend)
    return _maker(slapd, tmp_path, context, backend)


@pytest.fixture
def make_any_source(
    slapd: Slapd, tmp_path: Path, context: PluginContext
) -> Callable[..., LdapSource]:
    """Like ``make_source``, once, with ``backend`` among the keywords (default ``auto``)."""
    return _maker(slapd, tmp_path, context, "auto")
