"""``provisiond check`` on a configuration whose source is a test slapd."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from daemon.cli import main
from tests.ldap import seed
from tests.ldap.slapd import READER_DN, READER_PASSWORD, Slapd


def write_config(tmp_path: Path, slapd: Slapd, password: str = READER_PASSWORD) -> Path:
    config = {
        "source": {"kind": "ldap", "options": seed.reader_options(slapd, tmp_path, password)},
        "targets": [{"name": "audit", "kind": "log", "groups": ["staff"]}],
        "state": {"path": str(tmp_path / "state.db")},
    }
    path = tmp_path / "provisiond.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_check(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["-c", str(config), "check"], env={"COLUMNS": "1000"})
    # rich wraps long lines (temp paths under xdist) where no terminal gives it a width.
    return result.exit_code, result.output.replace("\n", "")


def test_check_reports_the_bind_and_the_counts(tmp_path: Path, slapd: Slapd) -> None:
    code, output = run_check(write_config(tmp_path, slapd))
    assert code == 0, output
    assert (
        f"LDAP {slapd.url}: bound as {READER_DN}, 3 users, 3 groups, 1 entry skipped (see log)"
    ) in output
    # The log names the skipped entry: dave has no mail.
    assert f"uid=dave,{seed.PEOPLE}" in output
    assert "start_tls is off" in output
    # This slapd has no syncprov: check says the source falls back to polls.
    assert "sync: auto: the server has no syncprov, so incremental polls" in output


def test_check_fails_on_a_refused_bind_without_the_password(tmp_path: Path, slapd: Slapd) -> None:
    code, output = run_check(write_config(tmp_path, slapd, password="not-the-password-42"))
    assert code == 1
    assert "FAIL" in output and "invalidCredentials" in output
    assert "not-the-password-42" not in output
