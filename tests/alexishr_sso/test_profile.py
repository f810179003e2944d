"""The AlexisHR SP profile: audience and ACS formats, sandbox, overrides and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.runtime import PluginContext
from daemon.saml.endpoint import profiles_of
from daemon.saml.names import NAMEID_EMAIL
from daemon.secrets import SECRETS
from plugins.alexishr.options import AlexisHROptions
from plugins.alexishr.sso import sso_profile
from tests.alexishr_sso.conftest import ACS, AUDIENCE, StandInTarget, make_options


def _context(tmp: Path) -> PluginContext:
    return PluginContext(tmp, tmp, SECRETS)


def test_production_profile(tmp_path):
    profile = sso_profile("alexishr", make_options(tmp_path), _context(tmp_path))
    assert profile is not None
    assert profile.entity_id == AUDIENCE
    assert profile.acs_url == ACS
    assert profile.title == "AlexisHR"
    assert profile.path == "alexishr"
    assert profile.name_id_format == NAMEID_EMAIL
    assert profile.name_id_field == "email"
    assert dict(profile.attributes) == {
        "email": "email",
        "firstName": "given_name",
        "lastName": "family_name",
    }
    assert profile.signing.key_file == tmp_path / "idp.key"
    assert profile.signing.cert_file == tmp_path / "idp.crt"
    assert profile.sign_response and profile.sign_assertion
    assert not profile.require_mfa
    strict = sso_profile("alexishr", make_options(tmp_path, require_mfa=True), _context(tmp_path))
    assert strict is not None and strict.require_mfa


def test_sandbox_profile_and_overrides(tmp_path):
    sandbox = AlexisHROptions.model_validate(
        {
            "connection": "nordlys",
            "sandbox": True,
            "scim": {"token_file": "token"},
            "sso": {"key_file": "idp.key", "cert_file": "idp.crt", "path": "hr"},
        }
    )
    profile = sso_profile("alexishr", sandbox, _context(tmp_path))
    assert profile is not None
    assert profile.entity_id == "urn:auth0:alexishr-sandbox:nordlys"
    assert profile.acs_url == "https://auth.sandbox.alexishr.com/login/callback?connection=nordlys"
    assert profile.title == "AlexisHR (sandbox)"
    assert profile.path == "hr"
    overridden = make_options(
        tmp_path, audience="urn:other", acs_url="https://acs.example/cb", title="HR"
    )
    profile = sso_profile("alexishr", overridden, _context(tmp_path))
    assert profile is not None
    assert (profile.entity_id, profile.acs_url, profile.title) == (
        "urn:other",
        "https://acs.example/cb",
        "HR",
    )


def test_no_profile_without_sso_or_when_disabled(tmp_path):
    off = make_options(tmp_path, enabled=False)
    assert sso_profile("alexishr", off, _context(tmp_path)) is None
    none = AlexisHROptions.model_validate({"connection": "c", "scim": {"token_file": "t"}})
    assert sso_profile("alexishr", none, _context(tmp_path)) is None


def test_the_endpoint_serves_only_targets_that_give_a_profile(tmp_path):
    context = _context(tmp_path)
    mine = StandInTarget("alexishr", make_options(tmp_path), context)

    class WithoutSso:  # a target with no SAML side at all (for example the log target)
        name, kind = "other", "log"

    class WithNoProfile(StandInTarget):
        def sso_profile(self) -> None:
            return None

    own = WithNoProfile("own", make_options(tmp_path), context)
    assert list(profiles_of({"alexishr": mine, "other": WithoutSso(), "own": own})) == ["alexishr"]


def test_alexishr_sso_block_refuses_what_the_shared_block_refuses(tmp_path):
    with pytest.raises(ValidationError, match="sign the assertion, the response or both"):
        make_options(tmp_path, sign_response=False, sign_assertion=False)
    with pytest.raises(ValidationError, match="'mobile' is not a directory field"):
        make_options(tmp_path, attributes={"phone": "mobile"})
