"""Active Directory's uSNChanged polling, EMULATED on slapd: no AD can run here.

What is emulated, and how: the AD-shaped schema (``ad.schema``) gives slapd
``uSNChanged`` (an ordered integer) and a DC's RootDSE attributes. The test
writes every ``uSNChanged`` value itself (slapd does not count USNs), serves
``highestCommittedUSN``, ``dsServiceName`` and ``dnsHostName`` from the file
slapd's ``rootDSE`` directive names (changing them means restarting slapd on
the same database), and keeps the DC's ``invocationId`` on an NTDS Settings
entry, as AD does. The source under test reads all of them over LDAP exactly
as it would from a DC.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources.ldap import LdapOptions, LdapSource
from daemon.sources.ldap.backend import Backend
from tests.ldap import seed
from tests.ldap.slapd import BASE_DN, READER_DN, READER_PASSWORD, SLAPD, Slapd, start

NTDS = f"cn=NTDS Settings,{BASE_DN}"
FIRST_DC = uuid.UUID("0d1c0000-0000-4000-8000-000000000001")
RESTORED = uuid.UUID("0d1c0000-0000-4000-8000-000000000002")
ENTRIES = {
    "anna": f"cn=Anna Berg,{seed.CORP}",
    "ben": f"cn=Ben Lind,{seed.CORP}",
    "cleo": f"cn=Cleo Ek,{seed.CORP}",
    "admins": f"cn=Admins,{seed.CORP}",
    "all": f"cn=All,{seed.CORP}",
}


def root_dse(highest: int, host: str = "dc1.corp.example") -> dict[str, str]:
    return {"highestCommittedUSN": str(highest), "dsServiceName": NTDS, "dnsHostName": host}


def ntds_ldif(invocation: uuid.UUID) -> str:
    value = base64.b64encode(invocation.bytes_le).decode()
    return f"dn: {NTDS}\nobjectClass: nTDSDSA\ncn: NTDS Settings\ninvocationId:: {value}\n\n"


def usn(dn: str, value: int, extra: str = "") -> str:
    """An LDIF change giving ``dn`` the ``uSNChanged`` a DC would have given the change."""
    return f"dn: {dn}\nchangetype: modify\nreplace: uSNChanged\nuSNChanged: {value}\n-\n{extra}\n"


@pytest.fixture
def dc(tmp_path: Path) -> Iterator[Slapd]:
    """slapd posing as a DC: the AD-shaped tree, USNs 100-104, highestCommittedUSN 104."""
    if not SLAPD.exists():
        pytest.skip("slapd is not installed (Debian package slapd)")
    work = tmp_path / "dc"
    work.mkdir()
    server = start(work, root_dse=root_dse(104))
    try:
        server.modify(seed.base_ldif() + seed.ad_ldif() + ntds_ldif(FIRST_DC))
        server.modify(
            "".join(
                f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: usnTracked\n-\n"
                f"add: uSNChanged\nuSNChanged: {100 + n}\n\n"
                for n, dn in enumerate(ENTRIES.values())
            )
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def ad(dc: Slapd, tmp_path: Path, backend: Backend) -> LdapSource:
    (tmp_path / "bind.pw").write_text(READER_PASSWORD)
    options: dict[str, Any] = {
        "url": dc.url,
        "start_tls": False,
        "bind_dn": READER_DN,
        "bind_password_file": tmp_path / "bind.pw",
        "preset": "active_directory",  # change_attribute: uSNChanged
        "user_base": seed.CORP,
        "group_base": seed.CORP,
        "backend": backend,
    }
    context = PluginContext(config_dir=tmp_path, state_dir=tmp_path, secrets=SecretStore())
    return LdapSource(LdapOptions.model_validate(options), context)


def titles(snapshot: Any) -> dict[str, str | None]:
    return {u.username: u.title for u in snapshot.users.values()}


USERS = "(&(objectCategory=person)(objectClass=user))"


async def test_each_poll_reads_the_window_up_to_the_highest_committed_usn(
    ad: LdapSource, dc: Slapd
) -> None:
    first = await ad.fetch(None)
    assert first is not None and ad.last_read == "full"
    # anna's change is committed (105, highest 106); cleo's (107) is committed after
    # the RootDSE was read: this poll must not take it, the next one will.
    dc.modify(
        usn(ENTRIES["anna"], 105, "replace: title\ntitle: CFO\n")
        + usn(ENTRIES["cleo"], 107, "replace: title\ntitle: Analyst\n")
    )
    dc.restart(root_dse(106))
    second = await ad.fetch(first.version)
    assert ad.last_read == "incremental"
    assert f"(&{USERS}(uSNChanged>=105)(uSNChanged<=106))" in ad.last_filters
    assert second is not None
    assert titles(second) == {"anna": "CFO", "ben": None, "cleo": None}

    dc.restart(root_dse(107))
    third = await ad.fetch(second.version)
    assert ad.last_read == "incremental"
    assert f"(&{USERS}(uSNChanged>=107)(uSNChanged<=107))" in ad.last_filters
    assert third is not None
    assert titles(third) == {"anna": "CFO", "ben": None, "cleo": "Analyst"}
    # Nothing committed since: the next window is empty.
    assert await ad.fetch(third.version) is None
    assert f"(&{USERS}(uSNChanged>=108)(uSNChanged<=107))" in ad.last_filters


async def test_a_restored_dc_gets_a_full_read(ad: LdapSource, dc: Slapd) -> None:
    first = await ad.fetch(None)
    assert first is not None
    # Restored from a backup: a new invocationId, and USNs that run again from
    # an older value: a change at 103 would never pass a window starting at 105.
    dc.modify(
        f"dn: {NTDS}\nchangetype: modify\nreplace: invocationId\ninvocationId:: "
        f"{base64.b64encode(RESTORED.bytes_le).decode()}\n\n"
        + usn(ENTRIES["ben"], 103, "replace: title\ntitle: Restored\n")
    )
    with structlog.testing.capture_logs() as logged:
        after = await ad.fetch(first.version)
    assert ad.last_read == "full"
    assert after is not None and titles(after)["ben"] == "Restored"
    (event,) = [e for e in logged if e["event"] == "ldap_domain_controller_changed"]
    assert str(RESTORED) in event["now"] and str(FIRST_DC) in event["before"]


async def test_another_dc_gets_a_full_read(ad: LdapSource, dc: Slapd) -> None:
    first = await ad.fetch(None)
    assert first is not None
    assert (await ad.fetch(first.version)) is None
    assert ad.last_read == "incremental"
    dc.restart(root_dse(104, host="dc2.corp.example"))
    await ad.fetch(first.version)
    assert ad.last_read == "full"
    # The new DC's marks are the ones used from now on.
    await ad.fetch(first.version)
    assert ad.last_read == "incremental"
