"""JumpCloud API records as canonical users, and v2 member lists as user ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from daemon.model import AccountState, SkippedRecord, User

log = structlog.get_logger(__name__)


def text(record: dict[str, Any], key: str) -> str | None:
    """A non-blank string field, stripped, or ``None``."""
    value = record.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _work_phone(record: dict[str, Any]) -> str | None:
    phones = record.get("phoneNumbers")
    if not isinstance(phones, list):
        return None
    for phone in phones:
        if isinstance(phone, dict) and phone.get("type") == "work":
            return text(phone, "number")
    return None


def _state(record: dict[str, Any]) -> AccountState:
    if record.get("suspended") is True:
        return AccountState.SUSPENDED
    state = record.get("state")
    if state is None or state == "ACTIVATED":
        return AccountState.ACTIVE
    if state not in ("SUSPENDED", "STAGED"):
        log.warning("jumpcloud_unknown_state", state=str(state)[:32], treated_as="suspended")
    return AccountState.SUSPENDED


def user_from_record(record: object, index: int, where: str) -> User | SkippedRecord:
    """A JumpCloud system user as a canonical :class:`User` (manager still a raw id)."""
    if not isinstance(record, dict):
        return SkippedRecord(where, f"#{index}", "-", "is not a JSON object")
    user_id = text(record, "_id") or text(record, "id")
    if user_id is None:
        return SkippedRecord(where, f"#{index}", "_id", "missing")
    username = text(record, "username")
    if username is None:
        return SkippedRecord(where, user_id, "username", "missing", object_id=user_id)
    mail = text(record, "email")
    if mail is None:
        return SkippedRecord(where, user_id, "email", "missing", object_id=user_id)
    if "@" not in mail.strip("@"):
        reason = f"{mail[:64]!r} is not an email address"
        return SkippedRecord(where, user_id, "email", reason, object_id=user_id)
    return User(
        id=user_id,
        username=username,
        email=mail,
        given_name=text(record, "firstname") or "",
        family_name=text(record, "lastname") or "",
        display_name=text(record, "displayname"),
        title=text(record, "jobTitle"),
        phone=_work_phone(record),
        employee_id=text(record, "employeeIdentifier"),
        department=text(record, "department"),
        cost_center=text(record, "costCenter"),
        company=text(record, "company"),
        manager=text(record, "manager"),
        state=_state(record),
    )


def member_ids(items: Sequence[object]) -> list[str]:
    """The user ids in a page of v2 graph connections (other member types are left out)."""
    out: list[str] = []
    for item in items:
        to = item.get("to") if isinstance(item, dict) else None
        if isinstance(to, dict) and to.get("type") == "user" and isinstance(to.get("id"), str):
            out.append(to["id"])
    return out
