"""Bad input: a mapping provisiond cannot send refuses start-up, naming the target and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from daemon.cli import main
from daemon.config import ConfigError
from daemon.plugins import plugin_manager
from daemon.service import read_config
from daemon.targets.scim.mapping import MappedSchema, MappingError

WIKI = "urn:ietf:params:scim:schemas:extension:wiki:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

# (mapping, omit, the key named, what is said about it)
CASES: dict[str, tuple[dict[str, Any], list[str], str, str]] = {
    "unknown field": ({"title": "job"}, [], "'title'", "'job' is not a directory field"),
    "field typo": ({"nickName": "usrname"}, [], "'nickName'", "did you mean 'username'?"),
    "state": ({"userType": "state"}, [], "'userType'", "'state' is not sent as a value"),
    "unknown attribute": ({"jobTitle": "title"}, [], "'jobTitle'", "not an attribute of the SCIM"),
    "unknown sub-attribute": (
        {"name.given": "given_name"},
        [],
        "'name.given'",
        "name has no sub-attribute 'given'",
    ),
    "complex path": ({"address.locality": "company"}, [], "'address.locality'", "not a SCIM path"),
    "multi-valued": ({"emails": "email"}, [], "'emails'", 'map emails[type eq "work"].value'),
    "home e-mail": (
        {'emails[type eq "home"].value': "email"},
        [],
        "'emails[type eq \"home\"].value'",
        "only the work entry is managed",
    ),
    "unsupported": ({"roles": "title"}, [], "'roles'", "multi-valued attribute provisiond does"),
    "id": ({"id": "id"}, [], "'id'", "cannot be mapped: id is assigned by the application"),
    "meta": ({"meta": "id"}, [], "'meta'", "cannot be mapped: meta is set by the application"),
    "schemas": ({"schemas": "id"}, [], "'schemas'", "cannot be mapped: schemas is set"),
    "externalId": ({"externalId": "username"}, [], "'externalId'", "always the directory id"),
    "active": ({"active": "title"}, [], "'active'", "follows the account state"),
    "password": ({"password": "id"}, [], "'password'", "never sent"),
    "groups": ({"groups": "department"}, [], "'groups'", "memberships are sent as Groups"),
    "qualified core": (
        {"urn:ietf:params:scim:schemas:core:2.0:User:externalId": "id"},
        [],
        "'urn:ietf:params:scim:schemas:core:2.0:User:externalId'",
        "always the directory id",
    ),
    "manager": ({f"{ENTERPRISE}:manager": "manager"}, [], f"'{ENTERPRISE}:manager'", "manager"),
    "enterprise typo": (
        {f"{ENTERPRISE}:departement": "department"},
        [],
        f"'{ENTERPRISE}:departement'",
        "did you mean 'department'?",
    ),
    "not a user extension": (
        {"urn:ietf:params:scim:schemas:core:2.0:Group:displayName": "title"},
        [],
        "'urn:ietf:params:scim:schemas:core:2.0:Group:displayName'",
        "is not a User schema extension",
    ),
    "extension sub-attribute": (
        {f"{WIKI}:team.name": "department"},
        [],
        f"'{WIKI}:team.name'",
        "'team.name' is not a SCIM attribute name",
    ),
    "not a URN": ({"urn:wiki": "department"}, [], "'urn:wiki'", "not a valid <schema URN>"),
    "template field": (
        {"displayName": "{given_name} {surname}"},
        [],
        "'displayName'",
        "'surname' is not a directory field",
    ),
    "template syntax": ({"displayName": "{given_name"}, [], "'displayName'", "cannot be read"),
    "template format": ({"displayName": "{title:>20}"}, [], "'displayName'", "{field} only"),
    "template without field": ({"userType": "{{x}}"}, [], "'userType'", "names no field"),
    "empty constant": ({"userType": {"const": ""}}, [], "'userType'", "{const: <non-empty"),
    "constant typo": ({"userType": {"value": "x"}}, [], "'userType'", "{const: <non-empty"),
    "no value": ({"userType": None}, [], "'userType'", "list the path under omit"),
    "constant userName": ({"userName": {"const": "x"}}, [], "'userName'", "must differ per user"),
    "same attribute twice": (
        {"nickName": "username", "nickname": "email"},
        [],
        "'nickname' and 'nickName'",
        "name the same attribute",
    ),
    "omit unknown": ({}, ["titel"], "omit 'titel'", "did you mean 'title'?"),
    "omit unmapped": ({}, ["nickName"], "omit 'nickName'", "nothing mapped there"),
    "omit userName": ({}, ["userName"], "omit 'userName'", "userName is required"),
    "omit externalId": ({}, ["externalId"], "omit 'externalId'", "not a mapped attribute"),
    "omit what is mapped": (
        {"title": "department"},
        ["title"],
        "omit 'title'",
        "'title' is mapped explicitly too",
    ),
}


def _write(tmp_path: Path, mapping: dict[str, Any], omit: list[str]) -> Path:
    (tmp_path / "wiki.token").write_text("a-token-of-the-wiki")
    scim: dict[str, Any] = {
        "base_url": "https://wiki.example.test/scim/v2",
        "token_file": "wiki.token",
        "mapping": mapping,
    }
    if omit:
        scim["omit"] = omit
    doc = {
        "source": {"kind": "file", "options": {"path": "directory.yaml"}},
        "targets": [
            {"name": "log", "kind": "log"},
            {"name": "wiki", "kind": "scim", "options": {"title": "Team Wiki", "scim": scim}},
        ],
    }
    path = tmp_path / "provisiond.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


#: Cases whose value is at fault (the rest: the path, or two entries together).
BAD_VALUES = {
    "unknown field",
    "field typo",
    "state",
    "template field",
    "template syntax",
    "template format",
    "template without field",
    "empty constant",
    "constant typo",
    "no value",
}
#: Cases only the whole mapping shows.
TOGETHER = {"constant userName", "same attribute twice"}


def _where(name: str, mapping: dict[str, Any], omit: list[str]) -> str:
    """Where the configuration error is: the mapping key itself, its value, or the list."""
    if omit:
        return "targets[1].options.scim.omit: omit "
    if name in TOGETHER:
        return "targets[1].options.scim.mapping: "
    [key] = mapping
    if name in BAD_VALUES:
        return f"targets[1].options.scim.mapping.{key}: "
    return f"targets[1].options.scim.mapping.{key}.[key]: "


@pytest.mark.parametrize("name", list(CASES))
def test_the_configuration_is_refused_naming_target_and_key(tmp_path: Path, name: str) -> None:
    mapping, omit, key, problem = CASES[name]
    path = _write(tmp_path, mapping, omit)
    with pytest.raises(ConfigError) as caught:
        read_config(path, plugin_manager(entry_points=False))
    [line] = caught.value.problems
    assert line.startswith(_where(name, mapping, omit)), line
    assert problem in line, line
    # Building the schema by hand says the same, with the key first.
    with pytest.raises(MappingError) as direct:
        MappedSchema(mapping, omit)
    assert str(direct.value).startswith(key), direct.value
    assert problem in str(direct.value)


def test_the_daemon_refuses_to_start_with_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, {"displayName": "{given_name} {surname}", "id": "id"}, [])
    result = CliRunner().invoke(main, ["-c", str(path), "check"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    # Every problem of the mapping at once, each naming its key.
    assert (
        "targets[1].options.scim.mapping.displayName: template '{given_name} {surname}': "
        "'surname' is not a directory field"
    ) in text
    assert (
        "targets[1].options.scim.mapping.id.[key]: cannot be mapped: id is assigned by the "
        "application"
    ) in text


def test_a_base_url_and_phone_region_are_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, {}, [])
    doc = yaml.safe_load(path.read_text())
    scim = doc["targets"][1]["options"]["scim"]
    scim["base_url"], scim["phone_region"] = "wiki.example.test/scim", "XX"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as caught:
        read_config(path, plugin_manager(entry_points=False))
    assert sorted(caught.value.problems) == [
        "targets[1].options.scim.base_url: 'wiki.example.test/scim' must be an absolute "
        "http(s) URL",
        "targets[1].options.scim.phone_region: 'XX' is not a region phonenumbers knows "
        "(use e.g. SE, GB, US)",
    ]
