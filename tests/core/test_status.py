"""The status document (``daemon.status``): read from the store and the last report."""

from __future__ import annotations

from daemon.config import TargetSettings
from daemon.model import Snapshot
from daemon.report import CycleReport, TargetReport
from daemon.status import daemon_status, report_dict, store_status, summary_line, target_status

from .support import BOUND, FedSource, RecordingTarget, org, slot


class Quarantined(RecordingTarget):
    """A target that adds a field of its own to the status document."""

    def status(self) -> dict[str, object]:
        return {"quarantined": True}


async def test_target_status_counts_failures_problems_and_holds(engines) -> None:
    target = RecordingTarget()
    target.fail = {"u3"}
    source = FedSource(org(40))
    eng = await engines(source, [slot(target, [BOUND])])
    await eng.cycle()
    source.set(Snapshot.of([], []))
    await eng.cycle()  # the guard holds 40 removals and the bound group's deletion
    disabled = TargetSettings(name="later", kind="log", enabled=False, groups=["x"])
    doc = await store_status(eng.store, [eng.targets[0].settings, disabled])
    assert doc["snapshot_version"] is not None
    app = doc["targets"]["app"]
    assert (app["kind"], app["bound_groups"]) == ("recording", [BOUND])
    assert (app["dirty"], app["failed"]) == (1, 1)
    assert (app["held_removals"], app["hold_approved"]) == (41, False)
    assert app["hold_since"] is not None
    assert [p["object"] for p in app["problems"]] == ["user:u3"]
    assert app["problems"][0]["error"] == "refused by the test"
    # A configured target that is not running is still listed, from the store alone.
    later = doc["targets"]["later"]
    assert (later["dirty"], later["failed"], later["held_removals"]) == (0, 0, 0)
    assert later["problems"] == []


async def test_targets_add_their_own_fields(engines) -> None:
    mine, other = Quarantined("mine"), RecordingTarget("other")
    eng = await engines(FedSource(org(2)), [slot(mine, [BOUND]), slot(other, [BOUND])])
    report = await eng.cycle()
    settings = [s.settings for s in eng.targets]
    targets = {"mine": mine, "other": other}
    doc = await daemon_status(
        eng.store,
        settings,
        targets=targets,
        source_kind="fed",
        last_report=report,
        live=True,
        ready=False,
    )
    assert (doc["live"], doc["ready"], doc["source"]) == (True, False, "fed")
    assert doc["last_cycle"] == report_dict(report)
    assert doc["targets"]["mine"]["quarantined"] is True
    assert "quarantined" not in doc["targets"]["other"]
    # Without running targets (``provisiond status``), only the store is read.
    plain = await target_status(eng.store, settings)
    assert "quarantined" not in plain["mine"]
    assert doc["source_status"] == {}  # FedSource has no status()


async def test_a_source_adds_its_own_fields(engines) -> None:
    class Backing(FedSource):
        def status(self) -> dict[str, object]:
            return {"bind_refusals": 2}

    source = Backing(org(2))
    eng = await engines(source, [])
    doc = await daemon_status(
        eng.store,
        [],
        targets={},
        source_kind="ldap",
        last_report=None,
        live=True,
        ready=True,
        source=source,
    )
    assert doc["source_status"] == {"bind_refusals": 2}


def test_report_dict_and_the_systemd_line() -> None:
    assert report_dict(None) is None
    report = CycleReport(id="c1", started_at=10.0, finished_at=10.5, result="ok", users=3)
    report.targets["app"] = TargetReport(planned=2, held=1, delivered=1, failed=1, dirty=4)
    doc = report_dict(report)
    assert doc is not None
    assert doc["seconds"] == 0.5
    assert doc["targets"] == {"app": {"planned": 2, "held": 1, "delivered": 1, "failed": 1}}
    assert summary_line(None, {}) == "starting"
    status = {"targets": {"a": {"dirty": 2, "held_removals": 0}, "b": {"dirty": 1}}}
    assert summary_line(report, status) == "last cycle ok: 3 users, 3 dirty"
    status["targets"]["b"]["held_removals"] = 5
    assert summary_line(report, status) == "last cycle ok: 3 users, 3 dirty, 5 removals held"
