"""A second application, "Team Wiki", connected from configuration alone (``kind: scim``).

Every test runs against scim2-server and the independent SCIMMY server, and
reads the outcome from the server itself. The YAML below is the worked
example of docs/connecting-an-application.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from daemon.apps.scim import GenericScimTarget
from daemon.targets.scim.schema import ENTERPRISE

from .world import PEERS, SCIM_URL, AppWorld, Peer, app_world, directory, person

WIKI = "urn:ietf:params:scim:schemas:extension:wiki:2.0:User"
EXTENSIONS = {WIKI: ["team", "site"]}

CONFIG = f"""
source:
  kind: file
  options:
    path: directory.yaml
state:
  path: state/provisiond.db
engine:
  retry_base: 0.05
  retry_max: 0.5
targets:
  - name: wiki
    kind: scim
    groups: ["Wiki Users"]
    options:
      title: Team Wiki
      scim:
        base_url: {SCIM_URL}
        token_file: wiki.token
        rate_limit: 1000
        mapping:
          displayName: "{{given_name}} {{family_name}} ({{department}})"
          userType: {{const: Employee}}
          {WIKI}:team: department
          {WIKI}:site: {{const: Nordlys HQ}}
        omit: [title, phoneNumbers]
"""

ADA = person("ada", department="Platform", title="CTO", phone="+46 70 123 45 67")
BO = person("bo", department="Support")
CY = person("cy", department="Platform")


def _org(members: list[str], *, users: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return directory(
        users if users is not None else [ADA, BO, CY],
        {"Wiki Users": members, "Editors": [m for m in members if m != "bo"]},
    )


def _bind_editors(config: str) -> str:
    return config.replace('groups: ["Wiki Users"]', 'groups: ["Wiki Users", "Editors"]')


async def _quiet(w: AppWorld) -> None:
    """Nothing changed: a cycle sends no write at all, and reconciliation finds nothing."""
    before = len(w.proxy.log)
    report = await w.engine.cycle()
    assert report.result == "quiet"
    assert w.writes(before) == []
    assert await w.target.reconcile() == {}
    assert w.writes(before) == []


def _members(w: AppWorld, name: str) -> set[str]:
    by_id = {u["id"]: u["externalId"] for u in w.dump("Users")}
    group = next(g for g in w.dump("Groups") if g["displayName"] == name)
    return {by_id[m["value"]] for m in group.get("members", [])}


@pytest.mark.parametrize("peer", PEERS)
async def test_the_wiki_is_provisioned_from_yaml_alone(tmp_path: Path, peer: Peer) -> None:
    doc = _org(["ada", "bo", "cy"])
    async with app_world(
        tmp_path, _bind_editors(CONFIG), doc, peer=peer, extensions=EXTENSIONS
    ) as w:
        assert isinstance(w.target, GenericScimTarget)
        assert w.target.kind == "scim" and w.target.profile.app == "Team Wiki"
        await w.converge()
        users = w.users_by_external()
        assert set(users) == {"ada", "bo", "cy"}
        ada = users["ada"]
        assert ada["userName"] == "ada@nordlys.example"
        assert ada["name"] == {"givenName": "Ada", "familyName": "Lindqvist"}
        assert ada["displayName"] == "Ada Lindqvist (Platform)"  # the template
        assert ada["userType"] == "Employee"  # the constant
        assert ada[WIKI] == {"team": "Platform", "site": "Nordlys HQ"}  # the extension
        assert ada[ENTERPRISE] == {"department": "Platform"}  # the default mapping
        assert ada["active"] is True
        assert [e["value"] for e in ada["emails"]] == ["ada@nordlys.example"]
        # Omitted: never sent, although the directory has them.
        assert "title" not in ada and "phoneNumbers" not in ada
        assert _members(w, "Wiki Users") == {"ada", "bo", "cy"}
        assert _members(w, "Editors") == {"ada", "cy"}
        await _quiet(w)


@pytest.mark.parametrize("peer", PEERS)
async def test_changes_memberships_and_deactivation(tmp_path: Path, peer: Peer) -> None:
    async with app_world(
        tmp_path, _bind_editors(CONFIG), _org(["ada", "bo", "cy"]), peer=peer, extensions=EXTENSIONS
    ) as w:
        await w.converge()
        ids = {k: v["id"] for k, v in w.users_by_external().items()}
        start = len(w.proxy.log)
        # cy moves team and leaves every bound group; ada's name changes.
        ada = {**ADA, "family_name": "Berg"}
        cy = {**CY, "department": "Ops"}
        w.write_directory(_org(["ada", "bo"], users=[ada, BO, cy]))
        await w.converge()
        users = w.users_by_external()
        assert {k: v["id"] for k, v in users.items()} == ids  # nobody re-created
        assert users["cy"]["active"] is False
        assert users["ada"]["displayName"] == "Ada Berg (Platform)"
        assert users["ada"]["name"]["familyName"] == "Berg"
        assert users["bo"]["active"] is True
        assert _members(w, "Wiki Users") == {"ada", "bo"}
        assert _members(w, "Editors") == {"ada"}
        writes = w.writes(start)
        assert not [x for x in writes if x.startswith("POST")]
        patches = [
            msgspec.json.decode(r.body)["Operations"]
            for r in w.proxy.requests("PATCH", f"/Users/{ids['ada']}")
        ]
        paths = sorted(op["path"] for ops in patches for op in ops)
        assert paths == ["displayName", "name.familyName"]
        await _quiet(w)

        # Back in the group: reactivated, with the new team.
        w.write_directory(_org(["ada", "bo", "cy"], users=[ada, BO, cy]))
        await w.converge()
        users = w.users_by_external()
        assert users["cy"]["active"] is True and users["cy"][WIKI]["team"] == "Ops"
        assert _members(w, "Editors") == {"ada", "cy"}
        await _quiet(w)


async def test_groups_off_sends_no_group(tmp_path: Path) -> None:
    config = CONFIG.replace("rate_limit: 1000", "rate_limit: 1000\n        manage_groups: false")
    async with app_world(tmp_path, config, _org(["ada", "bo"]), extensions=EXTENSIONS) as w:
        await w.converge()
        assert set(w.users_by_external()) == {"ada", "bo"}
        assert w.dump("Groups") == []
        assert not w.proxy.requests(path="/Groups")
        await _quiet(w)


@pytest.mark.parametrize("peer", PEERS)
async def test_a_username_mapping_finds_the_existing_account(tmp_path: Path, peer: Peer) -> None:
    # The application already has ada, under the userName the mapping gives her (her
    # username, not her e-mail), without an externalId: she is found and adopted.
    mapped = "        mapping:\n"
    config = CONFIG.replace(mapped, f"{mapped}          userName: username\n")
    async with app_world(
        tmp_path, config, _org(["ada"], users=[ADA]), peer=peer, extensions=EXTENSIONS
    ) as w:
        existing = w.post(
            "/Users",
            {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ada"},
        )
        await w.converge()
        users = w.dump("Users")
        assert [u["id"] for u in users] == [existing["id"]]
        assert users[0]["externalId"] == "ada" and users[0]["userType"] == "Employee"
        assert not w.proxy.requests("POST", "/Users")
        await _quiet(w)


async def test_two_applications_with_their_own_titles_run_side_by_side(tmp_path: Path) -> None:
    second = """
  - name: crm
    kind: scim
    groups: ["Wiki Users"]
    options:
      title: Sales CRM
      scim:
        base_url: ${SCIM_URL}/
        token_file: wiki.token
        rate_limit: 1000
"""
    async with app_world(tmp_path, CONFIG + second, _org(["ada"], users=[ADA])) as w:
        wiki, crm = (s.target for s in w.parts.slots)
        assert (wiki.profile.app, crm.profile.app) == ("Team Wiki", "Sales CRM")
        # One family of metrics for every generic application, by target.
        assert wiki.metrics is crm.metrics
        assert "Sales CRM" in crm.profile.access_revoked
        assert crm.base_url == w.proxy.url  # the trailing slash is dropped
