"""The status document: what ``provisiond status``, ``GET /api/v1/status`` and systemd show.

Everything here is read from the state store and the last cycle's report, so
the CLI builds the same per-target fields without a running daemon, and the
daemon (:mod:`daemon.service`) rebuilds the document after every cycle.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from daemon import __version__
from daemon.leadership import SOURCE, live_leader, target_lease
from daemon.screening import stale_objects

if TYPE_CHECKING:

    from daemon.config import TargetSettings
    from daemon.report import CycleReport
    from daemon.store import Store
    from daemon.targets.base import Target


def report_dict(report: CycleReport | None) -> dict[str, Any] | None:
    """One cycle's report as JSON-safe data (``sync --once`` prints it)."""
    if report is None:
        return None
    return {
        "id": report.id,
        "result": report.result,
        "error": report.error,
        "started_at": report.started_at,
        "seconds": round(report.duration, 4),
        "users": report.users,
        "groups": report.groups,
        "skipped_records": report.skipped,
        "stale_objects": report.stale,
        "changes": report.changes,
        "targets": {
            name: {
                "planned": t.planned,
                "held": t.held,
                "delivered": t.delivered,
                "failed": t.failed,
            }
            for name, t in report.targets.items()
        },
    }


async def target_status(
    store: Store,
    settings: Sequence[TargetSettings],
    targets: Mapping[str, Target] | None = None,
) -> dict[str, Any]:
    """Per-target status read from the store, one entry per ``settings`` item.

    Each target built in ``targets`` that has the optional ``status()`` method
    adds its own fields (for example token and quarantine state).
    """
    out: dict[str, Any] = {}
    for target in settings:
        dirty, failed = await store.counts(target.name)
        hold = await store.hold(target.name)
        problems = await store.problems(target.name, 10)
        out[target.name] = {
            "kind": target.kind,
            "bound_groups": list(target.groups),
            "dirty": dirty,
            "failed": failed,
            "held_removals": len(hold.keys) if hold else 0,
            "hold_since": hold.created_at if hold else None,
            "hold_approved": hold.approved if hold else False,
            "problems": [
                {
                    "object": f"{p.key[0]}:{p.key[1]}",
                    "attempts": p.attempts,
                    "error": p.last_error,
                    "next_attempt_at": p.next_attempt_at,
                }
                for p in problems
            ],
        }
        built = (targets or {}).get(target.name)
        status = getattr(built, "status", None)
        if status is not None:
            # The target's own fields (for example token and quarantine state).
            out[target.name].update(status() or {})
    return out


async def store_status(store: Store, settings: Sequence[TargetSettings]) -> dict[str, Any]:
    """``provisiond status``: the committed snapshot and every configured target.

    Under leader election, who leads the source and each target (``None``: no
    replica holds the lease now), from the lease table.
    """
    leases = await store.leases()
    targets = await target_status(store, settings)
    for name, fields in targets.items():
        fields["leader"] = live_leader(leases, target_lease(name))
    return {
        "snapshot_version": await store.get_meta("snapshot_version"),
        "snapshot_committed_at": await store.get_meta("snapshot_committed_at"),
        "stale_objects": await stale_objects(store),
        "source_leader": live_leader(leases, SOURCE),
        "targets": targets,
    }


async def daemon_status(
    store: Store,
    settings: Sequence[TargetSettings],
    *,
    targets: Mapping[str, Target],
    source_kind: str,
    last_report: CycleReport | None,
    live: bool,
    ready: bool,
    source: object | None = None,
) -> dict[str, Any]:
    """The running daemon's document (``GET /api/v1/status``), with the targets' fields.

    A ``source`` with the optional ``status()`` method adds its own fields
    under ``source_status`` (the ldap source: its refused binds and backoff).
    """
    per_target = await target_status(store, settings, targets)
    stale = await stale_objects(store)
    own = getattr(source, "status", None)
    return {
        "version": __version__,
        "live": live,
        "ready": ready,
        "source": source_kind,
        "source_status": (own() or {}) if callable(own) else {},
        "last_cycle": report_dict(last_report),
        "stale_objects": stale,
        "targets": per_target,
        "updated_at": time.time(),
    }


def summary_line(report: CycleReport | None, status: Mapping[str, Any]) -> str:
    """One line for ``systemctl status``, from the last report and status document."""
    if report is None:
        return "starting"
    targets = status.get("targets", {}).values()
    dirty = sum(t.get("dirty", 0) for t in targets)
    held = sum(t.get("held_removals", 0) for t in targets)
    return f"last cycle {report.result}: {report.users or 0} users, {dirty} dirty" + (
        f", {held} removals held" if held else ""
    )
