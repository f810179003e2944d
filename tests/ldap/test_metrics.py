"""The ldap source's Prometheus metrics: read kinds, durations, entries read, skips by reason."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daemon.metrics import REGISTRY
from daemon.sources.base import SourceError
from daemon.sources.ldap import LdapSource
from daemon.sources.metrics import reason_label
from tests.ldap import seed
from tests.ldap.slapd import Slapd

MakeSource = Callable[..., LdapSource]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reads(read: str, result: str = "ok") -> float:
    return sample("provisiond_source_reads_total", source="ldap", read=read, result=result)


def objects(kind: str) -> float:
    return sample("provisiond_source_objects_read_total", source="ldap", kind=kind)


async def test_full_and_incremental_reads_are_told_apart(
    make_source: MakeSource, slapd: Slapd
) -> None:
    source = make_source()
    full, incremental = reads("full"), reads("incremental")
    timed = sample("provisiond_source_fetch_duration_seconds_count", source="ldap", read="full")
    users, groups = objects("user"), objects("group")

    await source.fetch(None)
    assert reads("full") == full + 1
    assert (
        sample("provisiond_source_fetch_duration_seconds_count", source="ldap", read="full")
        == timed + 1
    )
    # alice, bob, carol, dave (skipped, but read); three groups.
    assert (objects("user"), objects("group")) == (users + 4, groups + 3)
    assert (
        sample("provisiond_source_skipped_entries", source="ldap", kind="user", reason="missing")
        == 1
    )

    slapd.modify(f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Lead\n")
    await source.fetch(None)
    assert reads("incremental") == incremental + 1
    # The increment counts what it returned, not the whole directory again.
    assert source.last_stats.users >= 1
    assert objects("user") == users + 4 + source.last_stats.users


async def test_a_failed_read_is_counted_as_failed(make_source: MakeSource, slapd: Slapd) -> None:
    source = make_source()
    failed = reads("full", "failed")
    slapd.stop()
    with pytest.raises(SourceError):
        await source.fetch(None)
    assert reads("full", "failed") == failed + 1


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("missing", "missing"),
        ("duplicate id", "duplicate"),
        ("'x@' is not an email address", "invalid"),
        ("is not UTF-8 text", "invalid"),
    ],
)
def test_free_text_reasons_become_fixed_labels(reason: str, label: str) -> None:
    assert reason_label(reason) == label
