"""The same YAML-only application signs users in: provisiond as its IdP, pysaml2 as its SP.

The target comes from the configuration file through ``read_config`` and
``assemble``; the sign-in stack is tests/sso/stack.py (a real engine cycle
into scim2-server, the portal, the core's sign-on endpoint), and pysaml2
verifies every Response with xmlsec1.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.saml import NAMEID_FORMAT_PERSISTENT
from yarl import URL

from daemon.apps.scim import GenericScimTarget
from daemon.cli import main
from daemon.plugins import plugin_manager
from daemon.runtime import PluginContext
from daemon.saml.keys import SigningKey, generate_signing_key, write_signing_key
from daemon.service import Parts, assemble, read_config
from tests.alexishr_scim.world import dump
from tests.scim.harness import running_scim_server
from tests.sso import stack

from .world import SCIM_URL

ENTITY_ID = "https://wiki.example.test/saml/metadata"
ACS = "https://wiki.example.test/saml/acs"
BOUND = "Wiki Users"

CONFIG = f"""
source:
  kind: file
  options:
    path: directory.yaml
http:
  public:
    enabled: true
    base_url: https://sso.nordlys.example
targets:
  - name: wiki
    kind: scim
    groups: ["{BOUND}"]
    options:
      title: Team Wiki
      scim:
        base_url: {SCIM_URL}
        token_file: wiki.token
        mapping:
          displayName: "{{given_name}} {{family_name}}"
      sso:
        key_file: idp.key
        cert_file: idp.crt
        entity_id: {ENTITY_ID}
        acs_url: {ACS}
        name_id_format: persistent
        name_id_field: id
        attributes:
          mail: email
          givenName: given_name
          sn: family_name
"""


@pytest.fixture(scope="module")
def idp_key() -> SigningKey:
    return generate_signing_key("provisiond test IdP")


@pytest.fixture(scope="module")
def sp_key() -> SigningKey:
    return generate_signing_key("wiki SP")


def _config_file(tmp_path: Path, scim_url: str, text: str = CONFIG) -> Path:
    (tmp_path / "wiki.token").write_text("wiki-token-for-the-sso-tests")
    path = tmp_path / "provisiond.yaml"
    path.write_text(text.replace(SCIM_URL, scim_url))
    return path


@contextlib.asynccontextmanager
async def _signed_in_world(
    tmp_path: Path, idp_key: SigningKey, scim_url: str
) -> AsyncIterator[tuple[stack.World, TestClient]]:  # type: ignore[type-arg]
    path = _config_file(tmp_path, scim_url)
    built: list[Parts] = []

    def from_yaml(context: PluginContext) -> GenericScimTarget:
        pm = plugin_manager(entry_points=False)
        built.append(assemble(read_config(path, pm), pm))
        target = built[0].slots[0].target
        assert isinstance(target, GenericScimTarget)
        return target

    async with stack.open_world(tmp_path, idp_key, from_yaml, BOUND) as w:
        port = int(w.base_url.rsplit(":", 1)[1])
        client = TestClient(TestServer(await stack.build_app(w), host="127.0.0.1", port=port))
        await client.start_server()
        try:
            yield w, client
        finally:
            await client.close()
            await built[0].aclose()


async def test_provisions_and_signs_in_to_a_pysaml2_sp(
    tmp_path: Path, idp_key: SigningKey, sp_key: SigningKey
) -> None:
    with running_scim_server() as server:
        async with _signed_in_world(tmp_path, idp_key, server.url) as (w, client):
            # The engine cycle of the stack provisioned the bound users.
            users = {u["externalId"]: u for u in dump(server.url, "Users")}
            assert set(users) == {"u-alice", "u-carol"}
            assert users["u-alice"]["displayName"] == "Alice Lindqvist"
            [group] = dump(server.url, "Groups")
            assert group["displayName"] == BOUND and len(group["members"]) == 2

            metadata = await (await client.get("/saml2/wiki/metadata")).text()
            sp = stack.make_sp(
                w.tmp, sp_key, metadata, entity_id=ENTITY_ID, acs=ACS,
                name_id_format=NAMEID_FORMAT_PERSISTENT,
            )  # fmt: skip
            assert (await stack.sign_in(client, "alice")).status == 303
            portal = await (await client.get("/")).text()
            assert 'href="/saml2/wiki">Open Team Wiki</a>' in portal

            # IdP-initiated.
            page = await client.get("/saml2/wiki")
            text = await page.text()
            assert stack.form_action(text) == ACS
            response = sp.parse_authn_request_response(
                stack.hidden_fields(text)["SAMLResponse"], BINDING_HTTP_POST
            )
            assert response.name_id.text == "u-alice"
            assert response.name_id.format == NAMEID_FORMAT_PERSISTENT
            assert response.ava == {
                "mail": ["alice@nordlys.example"],
                "givenName": ["Alice"],
                "sn": ["Lindqvist"],
            }

            # SP-initiated, over the redirect binding.
            request_id, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
            location = urlsplit(dict(info["headers"])["Location"])
            # As the SP wrote it: a re-encoded query would break the request.
            page = await client.get(URL(f"{location.path}?{location.query}", encoded=True))
            fields = stack.hidden_fields(await page.text())
            again = sp.parse_authn_request_response(
                fields["SAMLResponse"], BINDING_HTTP_POST, outstanding={request_id: "/"}
            )
            assert again.in_response_to == request_id and again.name_id.text == "u-alice"


def test_saml_info_prints_the_sp_of_the_yaml(tmp_path: Path, idp_key: SigningKey) -> None:
    write_signing_key(idp_key, tmp_path / "idp.key", tmp_path / "idp.crt")
    path = _config_file(tmp_path, "https://wiki.example.test/scim/v2")
    result = CliRunner().invoke(main, ["-c", str(path), "saml", "info", "wiki"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "SSO URL:            https://sso.nordlys.example/saml2/wiki"
    assert f"Audience (SP ID):   {ENTITY_ID}" in lines
    assert f"ACS URL:            {ACS}" in lines
    assert result.output.endswith(idp_key.certificate_pem)


async def test_without_sso_or_with_it_off_there_is_no_sign_on(tmp_path: Path) -> None:
    doc = yaml.safe_load(_config_file(tmp_path, "https://wiki.example.test/scim/v2").read_text())
    sso = doc["targets"][0]["options"]["sso"]
    for options in ({**sso, "enabled": False}, None):
        if options is None:
            del doc["targets"][0]["options"]["sso"]
        else:
            doc["targets"][0]["options"]["sso"] = options
        path = tmp_path / "provisiond.yaml"
        path.write_text(yaml.safe_dump(doc))
        pm = plugin_manager(entry_points=False)
        parts = assemble(read_config(path, pm), pm)
        try:
            assert parts.slots[0].target.sso_profile() is None  # type: ignore[attr-defined]
            routes = pm.hook.provisiond_public_routes(targets=parts.targets, directory=None)
            assert [r for group in routes for r in group] == []
        finally:
            await parts.aclose()
        result = CliRunner().invoke(main, ["-c", str(path), "saml", "info", "wiki"])
        assert result.exit_code == 2
        assert "has no options.sso block, or it is disabled" in result.output
