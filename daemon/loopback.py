"""Whether an address or host name stays on this machine.

Several places relax a rule for loopback only (plain http to a local SCIM
sandbox, the admin API without a token, cookies without ``Secure``), so they
must all agree on what loopback is.
"""

from __future__ import annotations

import ipaddress


def is_loopback_address(text: str) -> bool:
    """An IP address in 127.0.0.0/8 or ``::1`` (also as ``::ffff:127.x.y.z``)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 from a dual-stack socket; Python 3.11 calls it non-loopback.
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_host(host: str) -> bool:
    """A host name (``localhost``) or address on loopback, without a port."""
    return host.lower() in ("localhost", "localhost.") or is_loopback_address(host)


def is_loopback_host_header(host: str) -> bool:
    """Whether a Host header (port optional, IPv6 in brackets) names loopback."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    else:
        name = host
    return is_loopback_host(name)
