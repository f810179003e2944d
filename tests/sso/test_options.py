"""The ``sso`` block: what an operator may write, and the profile it becomes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.runtime import PluginContext
from daemon.saml.errors import SamlConfigError
from daemon.saml.names import NAMEID_EMAIL, NAMEID_PERSISTENT, NAMEID_UNSPECIFIED
from daemon.saml.options import GenericSsoOptions
from daemon.saml.profile import SigningFiles, SpProfile
from daemon.secrets import SECRETS

BASE = {
    "key_file": "idp.key",
    "cert_file": "keys/idp.crt",
    "entity_id": "https://wiki.example.test/saml/metadata",
    "acs_url": "https://wiki.example.test/saml/acs",
}


def _options(**sso: object) -> GenericSsoOptions:
    return GenericSsoOptions.model_validate({**BASE, **sso})


def _problems(**sso: object) -> str:
    with pytest.raises(ValidationError) as caught:
        _options(**sso)
    return str(caught.value)


def test_defaults_and_the_profile(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    options = _options(next_cert_file="/etc/provisiond/next.crt")
    profile = options.sp_profile("wiki", PluginContext(tmp_path, tmp_path, SECRETS))
    assert profile == SpProfile(
        title="wiki",
        path="wiki",
        entity_id=BASE["entity_id"],
        acs_url=BASE["acs_url"],
        signing=SigningFiles(
            key_file=tmp_path / "idp.key",
            cert_file=tmp_path / "keys" / "idp.crt",
            next_cert_file=Path("/etc/provisiond/next.crt"),
        ),
        name_id_format=NAMEID_EMAIL,
        name_id_field="email",
        attributes={},
    )


@pytest.mark.parametrize(
    ("written", "urn"),
    [
        ("email", NAMEID_EMAIL),
        ("persistent", NAMEID_PERSISTENT),
        ("unspecified", NAMEID_UNSPECIFIED),
        (NAMEID_PERSISTENT, NAMEID_PERSISTENT),
    ],
)
def test_name_id_formats(written, urn):
    assert _options(name_id_format=written).name_id_format == urn


def test_bad_blocks_name_the_key_and_the_problem():
    assert "name_id_format" in _problems(name_id_format="transient")
    assert "transient NameID is not supported" in _problems(name_id_format="transient")
    problem = _problems(name_id_field="mobile")
    assert "name_id_field" in problem and "'mobile' is not a directory field" in problem
    problem = _problems(attributes={"phone": "mobile"})
    assert "attributes" in problem and "attribute 'phone'" in problem
    # Every field but the account state may be sent.
    problem = _problems(name_id_field="state")
    assert "division" in problem and ", state" not in problem
    assert "sign the assertion, the response or both" in _problems(
        sign_response=False, sign_assertion=False
    )
    assert "needs sp_cert_file" in _problems(want_requests_signed=True)
    assert "absolute http(s) URL" in _problems(acs_url="/saml/acs")
    assert "acs_url" in _problems(acs_url=None)
    assert "entity_id" in str(_problems(entity_id=""))
    assert "path" in _problems(path="Not/A/Segment")
    assert "extra" in _problems(audience="urn:x").lower()


def test_profile_checks_what_code_builds():
    files = SigningFiles(Path("/k"), Path("/c"))
    with pytest.raises(SamlConfigError, match="attribute 'n' comes from 'nickname', which is not"):
        SpProfile("App", "app", "urn:app", "https://app/acs", files, attributes={"n": "nickname"})
    with pytest.raises(SamlConfigError, match="path"):
        SpProfile("App", "App Path", "urn:app", "https://app/acs", files)


def test_require_mfa_reaches_the_profile(tmp_path: Path):
    context = PluginContext(tmp_path, tmp_path, SECRETS)
    assert not _options().sp_profile("wiki", context).require_mfa
    assert _options(require_mfa=True).sp_profile("wiki", context).require_mfa
