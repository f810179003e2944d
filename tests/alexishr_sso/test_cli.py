"""``provisiond saml keygen``, ``saml info`` and ``passwd``."""

from __future__ import annotations

import stat
from pathlib import Path

import argon2
import pytest
from click.testing import CliRunner

from daemon.cli import main
from daemon.cli import saml as saml_cli
from daemon.config import Config, Settings
from daemon.saml.keys import load_signing_key
from daemon.sources.file import FileSourceOptions
from tests.alexishr_sso.conftest import make_options


def test_keygen_writes_a_private_key_and_a_certificate(tmp_path: Path):
    key, cert = tmp_path / "idp.key", tmp_path / "idp.crt"
    args = ["saml", "keygen", "--key", str(key), "--cert", str(cert), "--days", "30"]
    result = CliRunner().invoke(main, [*args, "--cn", "sso.nordlys.example"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = load_signing_key(key, cert)
    assert 29 * 86400 < loaded.seconds_until_expiry() <= 30 * 86400 + 600
    # Never overwrites by accident.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2
    assert "--force" in again.output


def _config(tmp_path: Path, **public: object) -> Config:
    settings = Settings.model_validate(
        {
            "targets": [{"name": "alexishr", "kind": "alexishr"}],
            "http": {"public": {"enabled": True, **public}},
        }
    )
    return Config(
        settings,
        tmp_path / "provisiond.yaml",
        FileSourceOptions(path=Path("directory.yaml")),
        {"alexishr": make_options(tmp_path, path="nordlys")},
    )


def test_info_prints_what_to_paste_into_alexishr(tmp_path, monkeypatch, idp_key):
    from daemon.saml.keys import write_signing_key

    write_signing_key(idp_key, tmp_path / "idp.key", tmp_path / "idp.crt")
    config = _config(tmp_path, base_url="https://sso.nordlys.example")
    monkeypatch.setattr(saml_cli, "_config", lambda ctx: config)
    result = CliRunner().invoke(main, ["saml", "info", "alexishr"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "SSO URL:            https://sso.nordlys.example/saml2/nordlys"
    assert lines[1] == "Sign-out URL:       https://sso.nordlys.example/saml2/nordlys/slo"
    assert "urn:auth0:alexishr:nordlys" in result.output
    # The certificate exactly as PEM, line breaks kept.
    assert result.output.endswith(idp_key.certificate_pem)


def test_info_refuses_an_unknown_target(tmp_path, monkeypatch):
    monkeypatch.setattr(saml_cli, "_config", lambda ctx: _config(tmp_path))
    result = CliRunner().invoke(main, ["saml", "info", "nope"])
    assert result.exit_code == 2
    assert "no target named 'nope'" in result.output


def test_passwd_from_stdin_prints_an_argon2id_line():
    result = CliRunner().invoke(main, ["passwd", "alice", "--stdin"], input="long-enough-pw\n")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("password_hash:"))
    hashed = line.split("'")[1]
    assert hashed.startswith("$argon2id$")
    assert argon2.PasswordHasher().verify(hashed, "long-enough-pw")
    assert "long-enough-pw" not in result.output


def test_passwd_prompts_twice_and_refuses_a_mismatch():
    ok = CliRunner().invoke(main, ["passwd", "alice"], input="long-enough-pw\nlong-enough-pw\n")
    assert ok.exit_code == 0
    assert "password_hash: '$argon2id$" in ok.stdout
    mismatch = CliRunner().invoke(main, ["passwd", "alice"], input="long-enough-pw\nother\n" * 2)
    assert mismatch.exit_code != 0


@pytest.mark.parametrize("password", ["", "short"])
def test_passwd_refuses_short_passwords(password):
    result = CliRunner().invoke(main, ["passwd", "alice", "--stdin"], input=f"{password}\n")
    assert result.exit_code == 2
    assert "at least 8" in result.output
