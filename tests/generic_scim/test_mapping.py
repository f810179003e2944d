"""The configured mapping: the bodies it builds, what it manages, the model it validates."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from daemon.model import AccountState, User
from daemon.targets.scim.mapping import DEFAULT_MAPPING, MappedSchema, MappingError
from daemon.targets.scim.schema import CORE_USER, ENTERPRISE, SKIP

ACME = "urn:example:params:scim:schemas:extension:acme:2.0:User"


def _user(**kw: Any) -> User:
    fields: dict[str, Any] = {
        "id": "u-1",
        "username": "ada",
        "email": "Ada.Lindqvist@nordlys.example",
        "given_name": "Ada",
        "family_name": "Lindqvist",
    }
    fields.update(kw)
    return User(**fields)


FULL = _user(
    display_name="Ada L.",
    title="CTO",
    phone="070-123 45 67",
    employee_id="42",
    department="Platform",
    cost_center="CC-7",
    company="Nordlys",
    division="R&D",
    manager="u-0",
)

SCHEMAS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "default": ({}, []),
    "custom": (
        {
            "userName": "username",
            "displayName": "{given_name} {family_name}",
            "userType": {"const": "Employee"},
            "name.middleName": "title",
            f"{ACME}:team": "department",
            f"{ACME}:cost-centre": "cost_center",
            f"{ACME}:reportsTo": "manager",
        },
        ["phoneNumbers", ENTERPRISE],
    ),
    "profile url": ({"profileUrl": "https://wiki.example.test/~{username}"}, ["title"]),
}


def test_the_default_mapping() -> None:
    schema = MappedSchema()
    assert schema.body(FULL).body == {
        "schemas": [CORE_USER, ENTERPRISE],
        "externalId": "u-1",
        "userName": "Ada.Lindqvist@nordlys.example",
        "name": {"givenName": "Ada", "familyName": "Lindqvist"},
        "displayName": "Ada L.",
        "title": "CTO",
        "emails": [{"value": "Ada.Lindqvist@nordlys.example", "type": "work", "primary": True}],
        "phoneNumbers": [{"value": "070-123 45 67", "type": "work"}],
        ENTERPRISE: {
            "employeeNumber": "42",
            "department": "Platform",
            "costCenter": "CC-7",
            "organization": "Nordlys",
            "division": "R&D",
        },
        "active": True,
    }
    assert schema.user_name(FULL) == FULL.email
    assert len(schema.rules) == len(DEFAULT_MAPPING)


def test_a_custom_mapping_with_an_extension_a_constant_and_templates() -> None:
    schema = MappedSchema(*SCHEMAS["custom"])
    body = schema.body(FULL).body
    assert body["schemas"] == [CORE_USER, ACME]
    assert body["userName"] == "ada" and schema.user_name(FULL) == "ada"
    assert body["displayName"] == "Ada Lindqvist"
    assert body["userType"] == "Employee"
    assert body["name"] == {"givenName": "Ada", "familyName": "Lindqvist", "middleName": "CTO"}
    assert body[ACME] == {"team": "Platform", "cost-centre": "CC-7", "reportsTo": "u-0"}
    assert ENTERPRISE not in body and "phoneNumbers" not in body
    # The resource the client sends carries the attribute names as configured.
    sent = schema.resource(body).model_dump(mode="json", by_alias=True)
    assert sent[ACME] == body[ACME]


@pytest.mark.parametrize("user", [FULL, _user(), _user(state=AccountState.SUSPENDED)])
@pytest.mark.parametrize("schema_args", SCHEMAS.values(), ids=list(SCHEMAS))
def test_what_is_sent_is_exactly_what_is_compared(
    schema_args: tuple[dict[str, Any], list[str]], user: User
) -> None:
    # The server's copy of a body, projected onto the managed attributes, is the body:
    # so reconciliation compares what is sent, no more (nothing unmanaged is touched)
    # and no less (every mapped attribute is repaired).
    schema = MappedSchema(*schema_args)
    body = schema.body(user).body
    remote = schema.to_json(schema.resource(body))
    assert schema.project(remote) == {k: v for k, v in body.items() if k != "schemas"}
    managed = schema.managed_keys()
    for key, value in body.items():
        if key == "schemas":
            continue
        assert key in managed
        if isinstance(value, dict):
            assert set(value) <= set(managed[key] or ())


def test_managed_keys_cover_every_mapped_attribute_and_no_omitted_one() -> None:
    schema = MappedSchema(*SCHEMAS["custom"])
    assert schema.managed_keys() == {
        "userName": None,
        "externalId": None,
        "active": None,
        "name": frozenset({"givenName", "familyName", "middleName"}),
        "displayName": None,
        "title": None,
        "emails": None,
        "userType": None,
        ACME: frozenset({"team", "cost-centre", "reportsTo"}),
    }
    # Even for a user with none of them, so a value the directory loses is removed.
    assert "title" not in schema.body(_user()).body


def test_paths_are_matched_ignoring_case_and_sent_as_the_schema_spells_them() -> None:
    schema = MappedSchema(
        {
            "displayname": "title",
            "NAME.GIVENNAME": "username",
            f"{ENTERPRISE.upper()}:COSTCENTER": "company",
            'EMAILS[type eq "work"].VALUE': "username",
            "urn:ietf:params:scim:schemas:core:2.0:User:nickName": "title",
        },
        ["urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:department"],
    )
    body = schema.body(FULL).body
    assert body["displayName"] == body["nickName"] == "CTO"
    assert body["name"]["givenName"] == "ada"
    assert body[ENTERPRISE]["costCenter"] == "Nordlys"
    assert "department" not in body[ENTERPRISE]
    assert body["emails"][0]["value"] == "ada"


def test_templates_collapse_the_gaps_of_empty_fields() -> None:
    schema = MappedSchema(
        {"displayName": "{given_name} {title} {family_name}", "nickName": "{title} @ {company}"}
    )
    body = schema.body(_user()).body
    assert body["displayName"] == "Ada Lindqvist"
    assert "nickName" not in body  # every field it names is empty
    assert schema.body(_user(company="Nordlys")).body["nickName"] == "@ Nordlys"
    braces = MappedSchema({"nickName": "{{{username}}}"})
    assert braces.body(_user()).body["nickName"] == "{ada}"


def test_with_a_phone_region_the_phone_goes_as_e164() -> None:
    schema = MappedSchema(phone_region="SE")
    mapped = schema.body(_user(phone="070-123 45 67"))
    assert mapped.body["phoneNumbers"] == [{"value": "+46701234567", "type": "work"}]
    bad = schema.body(_user(phone="not a number"))
    assert "phoneNumbers" not in bad.body and bad.body[SKIP] == ["phoneNumbers"]
    assert bad.problems and "not a number" in bad.problems[0]


def test_a_user_without_a_user_name_cannot_be_sent() -> None:
    schema = MappedSchema({"userName": "display_name"})
    with pytest.raises(MappingError, match="userName: display_name is empty for this user"):
        schema.body(_user())


@pytest.mark.parametrize("title", ["https://wiki.example.test/ada", "not a uri at all"])
def test_the_cheap_check_agrees_with_the_model(title: str) -> None:
    schema = MappedSchema({"profileUrl": "title"})
    body = schema.body(_user(title=title)).body

    def refused(call: Any) -> bool:
        try:
            call()
        except (ValidationError, ValueError):
            return True
        return False

    assert refused(lambda: schema.check(body)) == refused(lambda: schema.resource(body))


def test_one_extension_urn_written_in_two_cases_is_one_extension() -> None:
    schema = MappedSchema({f"{ACME}:team": "department", f"{ACME.upper()}:site": "company"})
    body = schema.body(FULL).body
    assert body["schemas"] == [CORE_USER, ENTERPRISE, ACME]
    assert body[ACME] == {"team": "Platform", "site": "Nordlys"}
    upper = MappedSchema({"URN" + ACME[3:] + ":team": "department"})
    assert upper.body(FULL).body[ACME] == {"team": "Platform"}
