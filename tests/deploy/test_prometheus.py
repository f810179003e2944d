"""deploy/prometheus and deploy/grafana: promtool checks and unit-tests the alerts, lints the
real ``/metrics`` output, and every metric the alerts and the dashboard query exists there.

The live daemon runs the file source and the log target, so labelled metrics
of features it does not exercise (SCIM requests, SSO) have no samples yet.
prometheus_client still declares every registered family with ``# HELP`` and
``# TYPE`` lines, and the check accepts a declared family: the name exists in
the real exposition even before its first sample.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.live import Daemon, write_deployment
from tests.deploy.tools import DEPLOY, run, tool

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "provisiond-alerts.yml"
RULE_TESTS = PROMETHEUS / "provisiond-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "provisiond-dashboard.json"
#: Series Prometheus makes itself, not the daemon.
SCRAPE_SERIES = {"up"}
_METRIC = re.compile(r"\bprovisiond_[a-zA-Z0-9_]+|\bup(?=\{)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
#: The leadership metrics of issue 11, which the alerts query before the code
#: that exports them (``daemon.leadership``) has landed.
HA_METRICS = {
    "provisiond_leader",
    "provisiond_source_leader",
    "provisiond_leader_changes_total",
    "provisiond_lease_age_seconds",
}


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield target["expr"]
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def test_rules_pass_promtool_check() -> None:
    result = run(tool("promtool"), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", RULE_TESTS, cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in alerts():
        assert cases.get(rule["alert"]) == {True, False}, rule["alert"]


def test_every_alert_has_a_severity_summary_and_runbook() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), (rule["alert"], key)


def test_the_issue_s_alerts_are_all_there() -> None:
    """One alert for each condition the issue lists (names are the contract)."""
    exprs = {rule["alert"]: rule["expr"] for rule in alerts()}
    wanted = {
        "ProvisiondNoSuccessfulCycle": "provisiond_last_successful_cycle_timestamp_seconds",
        "ProvisiondTargetQuarantined": "provisiond_alexishr_quarantined",
        "ProvisiondHeldRemovals": "provisiond_held_removals",
        "ProvisiondFailedObjectsGrowing": "provisiond_failed_objects",
        "ProvisiondDirtyObjectsGrowing": "provisiond_dirty_objects",
        "ProvisiondScimTokenRefused": "provisiond_alexishr_auth_ok",
        "ProvisiondSsoRefusalRateHigh": "provisiond_sso_refusals_total",
        "ProvisiondSamlCertificateExpiring": "provisiond_saml_certificate_expiry_seconds",
        "ProvisiondDown": "up",
        # Issue 11 (high availability): no leader, nobody polls, flapping.
        "ProvisiondNoLeader": "provisiond_leader",
        "ProvisiondNoSourceLeader": "provisiond_source_leader",
        "ProvisiondLeaderFlapping": "provisiond_leader_changes_total",
        "ProvisiondLeaseRenewalLate": "provisiond_lease_age_seconds",
    }
    for alert, metric in wanted.items():
        assert metric in metric_names(exprs[alert]), alert


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses each dashboard query (as a recording rule), Grafana variables filled."""
    exprs = dashboard_exprs()
    assert exprs
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "provisiond"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# -- against the real /metrics ------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    config = write_deployment(tmp_path_factory.mktemp("metrics"))
    daemon = Daemon.start(config)
    try:
        daemon.wait_for("cycle finished")
        return daemon.get("/metrics")
    finally:
        assert daemon.stop() == 0


def exposed_names(text: str) -> set[str]:
    """Sample names, plus every family a ``# TYPE`` line declares (with its series names)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            if kind == "histogram":
                names.update(family + suffix for suffix in _HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.slow
def test_promtool_accepts_the_real_metrics(exposition: str, tmp_path: Path) -> None:
    assert "provisiond_cycles_total" in exposition
    metrics = tmp_path / "metrics.txt"
    metrics.write_text(exposition)
    with metrics.open() as stdin:
        result = run(tool("promtool"), "check", "metrics", stdin=stdin)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool prints lint findings (names, units, suffixes) even on success.
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout


@pytest.mark.slow
def test_every_dashboard_metric_exists(exposition: str) -> None:
    exposed = exposed_names(exposition)
    queried = set().union(*(metric_names(e) for e in dashboard_exprs())) - SCRAPE_SERIES
    assert queried, "the dashboard queries no provisiond metric"
    assert sorted(queried - exposed) == []


@pytest.mark.slow
def test_every_alert_metric_exists(exposition: str) -> None:
    exposed = exposed_names(exposition)
    queried = set().union(*(metric_names(r["expr"]) for r in alerts())) - SCRAPE_SERIES
    if importlib.util.find_spec("daemon.leadership") is None:
        # Until leadership lands, only its metrics may be missing (and are).
        assert queried >= HA_METRICS
        assert not HA_METRICS & exposed
        queried -= HA_METRICS
    assert sorted(queried - exposed) == []


@pytest.mark.slow
def test_every_core_metric_family_has_a_dashboard_panel(exposition: str) -> None:
    """The reverse check: a metric added to the daemon shows up on the dashboard."""
    queried = set().union(*(metric_names(e) for e in dashboard_exprs()))
    families = {
        line.split(" ")[2]
        for line in exposition.splitlines()
        if line.startswith("# TYPE ") and not line.split(" ")[2].endswith("_created")
    }
    families = {f for f in families if f.startswith("provisiond_")}
    missing = {
        f
        for f in families
        if f not in queried and not any(f + s in queried for s in _HISTOGRAM_SUFFIXES)
    }
    assert sorted(missing) == []
