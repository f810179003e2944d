"""Option validation: what bad configuration gets, before anything touches the network."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from daemon.sources.ldap import LdapOptions, LdapSource, provisiond_source_types

BASE: dict[str, Any] = {
    "url": "ldaps://ldap.example.org",
    "bind_dn": "cn=svc,dc=example,dc=org",
    "bind_password_file": "bind.pw",
    "user_base": "ou=people,dc=example,dc=org",
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("url", "http://ldap.example.org", "ldap://host"),
        ("url", "ldap://user:pw@ldap.example.org", "no user"),
        ("url", "ldap://ldap.example.org/dc=example", "no user, path"),
        ("url", "ldap://ldap.example.org:99999", "invalid port"),
        ("bind_dn", "not a dn", "not a valid DN"),
        ("user_filter", "(objectClass=person", "not a valid LDAP filter"),
        ("change_attribute", "modifyTimestamp>=0)(x", "not an LDAP attribute"),
        ("attributes", {"email": "mail)(uid=*"}, "not an LDAP attribute"),
        ("attributes", {"shoe_size": "shoeSize"}, "unknown field"),
        ("attributes", {"email": None}, "cannot be unmapped"),
        ("page_size", 0, "greater than or equal to 1"),
        ("sizelimit", 5, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_name_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LdapOptions.model_validate({**BASE, key: value})
    assert message in str(caught.value)
    assert key in str(caught.value)


def test_preset_defaults_and_overrides() -> None:
    layout = LdapOptions.model_validate(
        {**BASE, "attributes": {"title": None, "cost_center": "costCenter"}}
    ).layout()
    assert layout.fields["id"] == "entryUUID"
    assert layout.fields["cost_center"] == "costCenter"
    assert "title" not in layout.fields
    # Operational attributes are requested by name, or the server leaves them out.
    assert {"entryUUID", "modifyTimestamp", "pwdAccountLockedTime"} <= set(layout.user_attributes())


def test_plugin_offers_the_ldap_kind() -> None:
    (kind,) = provisiond_source_types()
    assert kind.kind == "ldap"
    assert kind.options is LdapOptions
    assert LdapSource.incremental is True
