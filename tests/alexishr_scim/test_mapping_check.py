"""The cheap body check refuses exactly what building the SCIM model refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from plugins.alexishr.mapping import UserSchema

from .world import person

CASES: list[dict[str, Any]] = [
    {},
    {"email": "Åsa.Öberg@corp.example", "given_name": "Åsa", "family_name": "Öberg"},
    {"email": "a+tag@sub.corp.example", "title": "Engineer", "phone": "+46 70 123 45 67"},
    {"email": "no-at-sign.corp.example"},
    {"email": "two@@corp.example"},
    {"email": "trailing@"},
    {"email": "spaces in@corp.example"},
    {"email": ""},
    {"email": "x@localhost"},
    {"phone": "not a number", "department": "Ops", "employee_id": "42"},
]
SCHEMAS = {
    "core": {},
    "extras": {"extra_mappings": {"nickName": "username", "name.middleName": "title"}},
    "profile": {"extra_mappings": {"profileUrl": "title"}},
    "alexis": {"alexis_extension": {"team": "department"}},
}


def _refused(call: Any) -> bool:
    try:
        call()
    except (ValidationError, ValueError):
        return True
    return False


@pytest.mark.parametrize("schema_kw", SCHEMAS.values(), ids=list(SCHEMAS))
@pytest.mark.parametrize("fields", CASES)
def test_check_agrees_with_the_model(schema_kw: dict[str, Any], fields: dict[str, Any]) -> None:
    schema = UserSchema(phone_region="SE", **schema_kw)
    body = schema.body(person("u1", **fields)).body
    assert _refused(lambda: schema.check(body)) == _refused(lambda: schema.resource(body))


@pytest.mark.parametrize("title", ["https://intra.example/u1", "not a uri at all", "/relative"])
def test_a_mapped_profile_url_is_checked_by_the_model(title: str) -> None:
    schema = UserSchema(phone_region="SE", extra_mappings={"profileUrl": "title"})
    body = schema.body(person("u1", title=title)).body
    assert _refused(lambda: schema.check(body)) == _refused(lambda: schema.resource(body))


def test_a_refused_address_names_the_attribute() -> None:
    schema = UserSchema(phone_region="SE")
    with pytest.raises(ValueError, match=r"emails\.0\.value: value is not a valid email"):
        schema.check(schema.body(person("u1", email="trailing@")).body)


def test_a_phone_problem_names_the_user_as_the_directory_knows_them() -> None:
    """The directory id alone (``user:<entryUUID>``) does not lead an operator to the entry."""
    schema = UserSchema(phone_region="SE")
    user = person("3f2a6c1e", username="ada.lind", email="ada@corp.example", phone="not a number")
    (problem,) = schema.body(user).problems
    assert problem.startswith("user ada.lind (ada@corp.example): phone number 'not a number'")
