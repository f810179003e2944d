"""Minimal PATCH operations turning one SCIM resource (as JSON) into another.

Works on the JSON form (``model_dump(scim_ctx=...)`` output), so it is
independent of any resource class. Rules, by attribute kind:

- simple attribute: ``replace`` when changed, ``add`` when it appears,
  ``remove`` when it disappears (``None``, ``[]`` and ``{}`` count as absent);
- complex attribute (``name``): per sub-attribute, path ``name.givenName``;
- extension (``urn:...:User`` key): per attribute, path ``urn:...:User:department``;
- multi-valued attribute whose entries all carry a distinct ``type``: per type,
  path ``emails[type eq "work"].value``; a new type is an ``add`` of that entry,
  a vanished type a ``remove`` of ``emails[type eq "work"]``;
- any other multi-valued attribute: one whole-attribute ``replace`` when the
  entries differ as a set. Group ``members`` are better sent as explicit
  add/remove operations by the caller, since some servers drop members on a
  whole-list replace.

Values are compared the way a server compares them: ``userName`` and
``emails.value`` are case-insensitive (``caseExact: false`` in RFC 7643), so a
server that stores ``Ada@Example.com`` as ``Ada@example.com`` holds the same
value and needs no PATCH.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from scim2_models import PatchOperation, Path, ScimFilter

#: Keys that describe the resource rather than hold data, and are read-only.
NOT_PATCHED = frozenset({"schemas", "id", "meta"})


#: Attributes RFC 7643 makes case-insensitive that servers are known to rewrite.
CASE_INSENSITIVE = frozenset({"userName", "emails"})


def _comparable(path: str, value: Any) -> Any:
    """``value`` as the server compares it at ``path`` (top-level attribute name)."""
    attribute = path.split("[", 1)[0].split(".", 1)[0]
    if attribute not in CASE_INSENSITIVE:
        return value
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, dict) and isinstance(value.get("value"), str):
        return {**value, "value": value["value"].casefold()}
    if isinstance(value, list):
        return [_comparable(path, v) for v in value]
    return value


def _absent(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _op(op: str, path: str, value: Any = None) -> PatchOperation[Any]:
    if op == "remove":
        return PatchOperation(op=PatchOperation.Op.remove, path=Path(path))
    return PatchOperation(op=PatchOperation.Op(op), path=Path(path), value=value)


def _typed_entries(values: Any) -> dict[str, dict[str, Any]] | None:
    """Entries keyed by their ``type`` when every entry has a distinct one, else ``None``."""
    if not isinstance(values, list):
        return None
    keyed: dict[str, dict[str, Any]] = {}
    for entry in values:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            return None
        if entry["type"] in keyed:
            return None
        keyed[entry["type"]] = entry
    return keyed


def _diff_simple(path: str, old: Any, new: Any) -> list[PatchOperation[Any]]:
    if _absent(old) and _absent(new):
        return []
    if _absent(new):
        return [_op("remove", path)]
    if _absent(old):
        return [_op("add", path, new)]
    if _canonical(_comparable(path, old)) != _canonical(_comparable(path, new)):
        return [_op("replace", path, new)]
    return []


def _diff_complex(
    prefix: str, old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[PatchOperation[Any]]:
    ops: list[PatchOperation[Any]] = []
    for key in sorted(set(old) | set(new)):
        ops += _diff_simple(f"{prefix}{key}", old.get(key), new.get(key))
    return ops


def _diff_multi(path: str, old: Any, new: Any) -> list[PatchOperation[Any]]:
    old_list = old if isinstance(old, list) else []
    new_list = new if isinstance(new, list) else []
    if sorted(_canonical(_comparable(path, v)) for v in old_list) == sorted(
        _canonical(_comparable(path, v)) for v in new_list
    ):
        return []
    old_typed, new_typed = _typed_entries(old_list), _typed_entries(new_list)
    if old_typed is None or new_typed is None or not old_list or not new_list:
        return _diff_simple(path, old_list, new_list)
    ops: list[PatchOperation[Any]] = []
    for kind in sorted(set(old_typed) | set(new_typed)):
        selector = f"{path}[type eq {ScimFilter.quote(kind)}]"
        before, after = old_typed.get(kind), new_typed.get(kind)
        if after is None:
            ops.append(_op("remove", selector))
        elif before is None:
            ops.append(_op("add", path, [after]))
        else:
            ops += _diff_complex(f"{selector}.", before, after)
    return ops


def _diff_attribute(path: str, old: Any, new: Any) -> list[PatchOperation[Any]]:
    if isinstance(old, list) or isinstance(new, list):
        return _diff_multi(path, old, new)
    if isinstance(old, dict) or isinstance(new, dict):
        old_map = old if isinstance(old, dict) else {}
        new_map = new if isinstance(new, dict) else {}
        if _absent(new_map) or _absent(old_map):
            return _diff_simple(path, old_map, new_map)
        return _diff_complex(f"{path}.", old_map, new_map)
    return _diff_simple(path, old, new)


def diff_operations(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    ignore: Collection[str] = NOT_PATCHED,
) -> list[PatchOperation[Any]]:
    """The operations that turn ``old`` into ``new`` (both SCIM JSON objects).

    Only keys present in either mapping are considered; pass the resource as the
    server last returned it as ``old``, and the desired state as ``new``. An
    attribute the caller does not manage should be left out of both. Keys in
    ``ignore`` are skipped. The result is empty when nothing changed.
    """
    ops: list[PatchOperation[Any]] = []
    for key in sorted(set(old) | set(new)):
        if key in ignore:
            continue
        before, after = old.get(key), new.get(key)
        if key.casefold().startswith("urn:") and (
            isinstance(before, dict) or isinstance(after, dict)
        ):
            ops += _diff_extension(key, before, after)
        else:
            ops += _diff_attribute(key, before, after)
    return ops


def _diff_extension(urn: str, old: Any, new: Any) -> list[PatchOperation[Any]]:
    old_map = old if isinstance(old, dict) else {}
    new_map = new if isinstance(new, dict) else {}
    ops: list[PatchOperation[Any]] = []
    for key in sorted(set(old_map) | set(new_map)):
        ops += _diff_attribute(f"{urn}:{key}", old_map.get(key), new_map.get(key))
    return ops
