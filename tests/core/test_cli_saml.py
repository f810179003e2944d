"""``provisiond saml info`` asks the options' shape, not the plugin (``daemon.saml.signon``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from daemon.cli import main
from daemon.cli import saml as saml_cli
from daemon.config import Config, Settings
from daemon.saml.keys import generate_signing_key, write_signing_key
from daemon.sources.file import FileSourceOptions
from daemon.targets.log import LogOptions


class AcmeSso(BaseModel):
    enabled: bool = True
    path: str | None = None
    key_file: Path
    cert_file: Path


class AcmeOptions(BaseModel):
    """Some other application's options, unknown to the core."""

    sso: AcmeSso | None = None
    audience: str = "https://acme.example/saml"
    acs_url: str = "https://acme.example/saml/acs"


class OddSso(BaseModel):
    """An ``sso`` block of another shape (no key files)."""

    enabled: bool = True


class OddOptions(BaseModel):
    sso: OddSso = OddSso()
    audience: str = "x"
    acs_url: str = "https://odd.example/acs"


def _config(tmp_path: Path, kind: str, options: BaseModel) -> Config:
    settings = Settings.model_validate(
        {"targets": [{"name": "app", "kind": kind}], "http": {"public": {"enabled": True}}}
    )
    return Config(
        settings,
        tmp_path / "provisiond.yaml",
        FileSourceOptions(path=Path("directory.yaml")),
        {"app": options},
    )


def _info(monkeypatch: pytest.MonkeyPatch, config: Config) -> tuple[int, str]:
    monkeypatch.setattr(saml_cli, "_config", lambda ctx: config)
    result = CliRunner().invoke(main, ["saml", "info", "app"])
    return result.exit_code, result.output


def test_any_kind_with_an_sso_block_gets_its_idp_details(tmp_path, monkeypatch):
    key = generate_signing_key("acme test IdP")
    write_signing_key(key, tmp_path / "idp.key", tmp_path / "idp.crt")
    sso = AcmeSso(path="acme", key_file=Path("idp.key"), cert_file=Path("idp.crt"))
    code, output = _info(monkeypatch, _config(tmp_path, "acme", AcmeOptions(sso=sso)))
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "SSO URL:            http://127.0.0.1:8080/saml2/acme"
    assert "Audience (SP ID):   https://acme.example/saml" in lines
    assert "ACS URL:            https://acme.example/saml/acs" in lines
    assert output.endswith(key.certificate_pem)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("log", LogOptions(), "target 'app' (kind log) has no SAML sign-in"),
        ("odd", OddOptions(), "target 'app' (kind odd) has no SAML sign-in"),
        ("acme", AcmeOptions(), "target 'app' has no options.sso block, or it is disabled"),
    ],
)
def test_a_target_without_a_usable_sso_block_is_refused(
    tmp_path, monkeypatch, kind, options, message
):
    code, output = _info(monkeypatch, _config(tmp_path, kind, options))
    assert code == 2
    assert message in output
