"""The connection's lean search-entry decoder, on hand-built BER trees (no server needed)."""

from __future__ import annotations

from typing import Any

import ldap3

from daemon.sources.ldap.directory import _lean_entries


def element(value: Any) -> list[Any]:
    """A decoded BER element as ldap3's fast decoder gives it: [class, constructed, tag, value]."""
    return [0, isinstance(value, list), 4, value]


def entry_message(dn: bytes, attrs: dict[bytes, list[bytes]]) -> dict[str, Any]:
    attributes = [
        element([element(name), element([element(v) for v in values])])
        for name, values in attrs.items()
    ]
    return {"protocolOp": 4, "payload": [element(dn), element(attributes)]}


def connection() -> ldap3.Connection:
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", get_info=ldap3.NONE))
    _lean_entries(conn)
    return conn


def test_entries_keep_the_dn_and_raw_values_under_lower_case_names() -> None:
    decoded = connection().strategy.decode_response_fast(
        entry_message(b"CN=Anna Berg,OU=corp", {b"objectGUID": [b"\x01\x02"], b"mail": [b"a@x"]})
    )
    assert decoded["type"] == "searchResEntry"
    assert decoded["dn"] == "CN=Anna Berg,OU=corp"
    assert decoded["raw_attributes"] == {"objectguid": [b"\x01\x02"], "mail": [b"a@x"]}
    # Same names in both dicts: ldap3's AD range retrieval edits both by name.
    assert set(decoded["attributes"]) == set(decoded["raw_attributes"])


def test_a_dn_that_is_not_utf8_is_read_as_latin1() -> None:
    decoded = connection().strategy.decode_response_fast(entry_message(b"cn=J\xf6rg", {}))
    assert decoded["dn"] == "cn=Jörg"


def test_other_messages_use_ldap3s_decoder() -> None:
    done = {
        "protocolOp": 5,
        "payload": [[0, 0, 10, 0], [0, 0, 4, b""], [0, 0, 4, b""]],
        "controls": None,
    }
    decoded = connection().strategy.decode_response_fast(done)
    assert decoded["type"] == "searchResDone"
    assert decoded["result"] == 0
