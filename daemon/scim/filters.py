"""Building SCIM filter expressions from untrusted values (RFC 7644 §3.4.2.2)."""

from __future__ import annotations

from typing import Any

from scim2_models import SCIMException, ScimFilter
from scim2_models.path import Comparison


def eq_filter(attribute: str, value: Any) -> str:
    """``<attribute> eq <value>``, with ``value`` quoted and escaped as a JSON literal.

    The value may hold anything (quotes, backslashes, ``or``...) and stays a single
    literal, so a crafted e-mail address cannot widen the query. ``attribute`` is
    the caller's constant (e.g. ``"userName"``); the expression is parsed before it
    is returned and must be one comparison, so a malformed attribute raises
    :class:`ValueError` here rather than at the server.
    """
    try:
        expression: ScimFilter[Any] = ScimFilter(f"{attribute} eq {ScimFilter.quote(value)}")
    except (TypeError, ValueError, SCIMException) as exc:
        raise ValueError(f"cannot build a filter on {attribute!r}: {exc}") from None
    if not isinstance(expression.ast, Comparison):
        raise ValueError(f"cannot build a filter on {attribute!r}: not a single attribute")
    return str(expression)
