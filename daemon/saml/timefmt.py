"""SAML's xs:dateTime values: always UTC, written with a ``Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from daemon.saml.errors import SamlRequestError

_FRACTION: Final = re.compile(r"\.(\d+)")


def format_instant(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds, as most SPs expect)."""
    if moment.tzinfo is None:
        raise ValueError("SAML instants must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str | None, what: str) -> datetime:
    """Parse an inbound xs:dateTime; ``what`` names the field in the error."""
    if not text or len(text) > 40:
        raise SamlRequestError(f"{what} is missing or malformed")
    # fromisoformat takes at most microseconds; senders may write more digits.
    value = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text.strip(), count=1)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SamlRequestError(f"{what} is missing or malformed") from None
    if moment.tzinfo is None:
        # xs:dateTime without a zone is "local" to nobody; SAML requires UTC.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
