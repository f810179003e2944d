"""A daemon on a file source and SQLite does not import asyncpg or ldap3.

Both are some 14 MB of the daemon's resident memory (issue 12): asyncpg is
imported when a ``postgresql`` store is made, ldap3 when an ``ldap`` source
is. Each check runs in a fresh interpreter, so what other tests imported
does not count.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
source: {kind: file, options: {path: dir.yaml}}
targets:
  - {name: audit, kind: log, groups: [Staff]}
"""


def _loaded(tmp_path: Path, body: str) -> list[str]:
    script = (
        textwrap.dedent(
            """
        import sys
        from pathlib import Path

        from daemon.plugins import Registry, plugin_manager
        from daemon.service import make_store, read_config

        path = Path(sys.argv[1])
        pm = plugin_manager()
        Registry.collect(pm)
        """
        )
        + textwrap.dedent(body)
        + textwrap.dedent(
            """
        print(" ".join(m for m in ("asyncpg", "ldap3") if m in sys.modules))
        """
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "provisiond.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_a_file_source_on_sqlite_imports_neither_asyncpg_nor_ldap3(tmp_path: Path) -> None:
    (tmp_path / "provisiond.yaml").write_text(CONFIG)
    body = """
        config = read_config(path, pm)
        make_store(config)
    """
    assert _loaded(tmp_path, body) == []


def test_a_postgresql_store_and_an_ldap_source_import_them(tmp_path: Path) -> None:
    (tmp_path / "provisiond.yaml").write_text(
        CONFIG
        + "state: {backend: postgresql, postgresql: {dsn: 'postgresql://u@127.0.0.1:1/db'}}\n"
    )
    body = """
        from daemon.sources.ldap import LdapOptions

        config = read_config(path, pm)
        make_store(config)  # not opened: no server needed
        LdapOptions.model_validate(
            {"url": "ldap://127.0.0.1", "user_base": "ou=people,dc=example,dc=org",
             "bind_dn": "cn=svc,dc=example,dc=org", "bind_password_file": "pw"}
        )
    """
    assert _loaded(tmp_path, body) == ["asyncpg", "ldap3"]
