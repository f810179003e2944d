"""Active Directory's documented way to poll for changes: ``uSNChanged`` windows on one DC.

Every AD object carries ``uSNChanged``, the update sequence number of its
last change, counted by each domain controller for itself. A poll reads the
DC's ``highestCommittedUSN`` from the RootDSE first, then asks for the
objects with ``last + 1 <= uSNChanged <= highest``; the next poll starts at
``highest + 1``. Changes committed while the poll reads have higher numbers
and come in the next window.

USNs are only comparable on one DC and one copy of its database. So each
poll also reads the DC's ``dnsHostName`` and the ``invocationId`` of its
NTDS Settings object (named by the RootDSE's ``dsServiceName``): another DC
answering (a load balancer, a DNS change), or the same DC restored from a
backup (a new ``invocationId``), means the window is meaningless, and the
source does a full read instead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ldap3.utils.conv import escape_filter_chars

from daemon.sources.ldap.backend import Reader

ROOT_DSE_ATTRIBUTES = ["highestCommittedUSN", "dsServiceName", "dnsHostName"]


@dataclass(frozen=True, slots=True)
class DomainController:
    """Which DC (and which copy of its database) answered, and its highest committed USN."""

    host: str
    invocation_id: str
    highest: int

    def same(self, other: DomainController | None) -> bool:
        """Whether USNs of ``other`` and of this DC can be compared."""
        return (
            other is not None
            and self.host.casefold() == other.host.casefold()
            and self.invocation_id == other.invocation_id
        )

    def describe(self) -> str:
        return f"{self.host or 'unnamed DC'} (invocationId {self.invocation_id or 'unknown'})"


def _text(raw: bytes | None) -> str:
    if not raw:
        return ""
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def read_dc(reader: Reader) -> DomainController | None:
    """The DC the reader is bound to; ``None`` when the RootDSE has no ``highestCommittedUSN``.

    ``None`` means the server is not AD (or hides it): the source then
    falls back to the highest ``uSNChanged`` it has seen.
    """
    root = reader.read_entry("", ROOT_DSE_ATTRIBUTES)
    if root is None:
        return None
    highest = _text(root.raw("highestCommittedUSN"))
    if not highest.isdigit():
        return None
    invocation = ""
    service = _text(root.raw("dsServiceName"))
    if service:
        ntds = reader.read_entry(service, ["invocationId"])
        raw = ntds.raw("invocationId") if ntds is not None else None
        if raw:
            invocation = str(uuid.UUID(bytes_le=raw)) if len(raw) == 16 else raw.hex()
    return DomainController(_text(root.raw("dnsHostName")), invocation, int(highest))


def usn_window(base_filter: str, attribute: str, low: str, high: int) -> str:
    """``base_filter`` narrowed to ``low <= attribute <= high``."""
    low = escape_filter_chars(low)
    return f"(&{base_filter}({attribute}>={low})({attribute}<={high}))"
