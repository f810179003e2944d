"""ldap3 and python-ldap read the same slapd into the same snapshots.

The backends differ only in how they talk to the server; every full and
incremental read must come out identical (version strings aside, which are
per source).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from daemon.model import Snapshot
from daemon.sources.ldap import LdapSource
from daemon.sources.ldap.backend import fast_backend_installed
from tests.ldap import seed
from tests.ldap.slapd import Slapd

MakeSource = Callable[..., LdapSource]

pytestmark = pytest.mark.skipif(
    not fast_backend_installed(), reason="python-ldap is not installed (ldap-fast extra)"
)


def _content(snapshot: Snapshot | None) -> tuple[Any, ...]:
    assert snapshot is not None
    return snapshot.users, snapshot.groups, snapshot.skipped


def _both(make_any_source: MakeSource, **options: Any) -> tuple[LdapSource, LdapSource]:
    return make_any_source(backend="ldap3", **options), make_any_source(
        backend="python-ldap", **options
    )


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"page_size": 25}, id="openldap"),
        pytest.param({"page_size": 25, "nested_groups": "direct"}, id="openldap-direct"),
        pytest.param(
            {
                "preset": "active_directory",
                "user_base": seed.CORP,
                "group_base": seed.CORP,
                "change_attribute": "modifyTimestamp",
                "member_of_attribute": "memberOf",
            },
            id="active_directory",
        ),
    ],
)
async def test_full_and_incremental_reads_agree(
    make_any_source: MakeSource, slapd: Slapd, options: dict[str, Any]
) -> None:
    # Beyond the reader's size limit of 50, so several pages, and skipped entries too.
    slapd.modify(seed.bulk_ldif(120))
    slow, fast = _both(make_any_source, **options)
    assert (slow.backend, fast.backend) == ("ldap3", "python-ldap")

    first = await slow.fetch(None), await fast.fetch(None)
    assert _content(first[0]) == _content(first[1])
    assert first[0] is not None and first[0].users and first[0].groups
    if "preset" not in options:
        assert first[0].skipped  # the malformed entries of the OpenLDAP tree
    assert slow.last_stats == fast.last_stats

    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Director\n"
        f"\ndn: cn=Anna Berg,{seed.CORP}\nchangetype: modify\nreplace: title\ntitle: Director\n"
    )
    second = await slow.fetch(None), await fast.fetch(None)
    assert (slow.last_read, fast.last_read) == ("incremental", "incremental")
    assert slow.last_filters == fast.last_filters
    assert _content(second[0]) == _content(second[1])
