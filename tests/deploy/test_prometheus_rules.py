"""deploy/prometheus: promtool checks the scrape config and the alert rules, and runs the rules' unit tests;
every alert has a firing and a quiet case, and every rule reads only series the service exports."""

from __future__ import annotations

import subprocess

import pytest
from deploy_support import DEPLOY, exported_series, load_yaml, metric_names

PROM = DEPLOY / "prometheus"


@pytest.fixture(scope="module")
def promtool(need) -> str:
    return need.binary("promtool", "bash scripts/install_prometheus.sh (the Debian package prometheus)")


def run(promtool: str, *args: str) -> str:
    out = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"] if "alert" in r}


def test_check_rules(promtool):
    assert f"SUCCESS: {len(alerts())} rules found" in run(promtool, "check", "rules", "alerts.yml")


def test_check_config(promtool):
    out = run(promtool, "check", "config", "prometheus.yml")
    assert "is valid prometheus config file syntax" in out


def test_rules_unit_tests(promtool):
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts_test.yml")


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases: dict[str, set[bool]] = {}
    for test in load_yaml(PROM / "alerts_test.yml")["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {name: {True, False} for name in alerts()} == {name: cases.get(name) for name in alerts()}


def test_alerts_read_exported_series_and_carry_a_runbook():
    exported = exported_series()
    for name, rule in alerts().items():
        assert metric_names(rule["expr"]) <= exported, (name, metric_names(rule["expr"]) - exported)
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"


def test_scrape_config_targets_the_compose_service():
    job = load_yaml(PROM / "prometheus.yml")["scrape_configs"][0]
    compose = load_yaml(DEPLOY / "compose.yaml")["services"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["dgr2:8000"] and "dgr2" in compose


def test_every_alert_is_explained_in_the_operations_guide():
    guide = (DEPLOY.parent / "docs" / "operations.md").read_text()
    for name in alerts():
        assert f"\n### {name}\n" in guide, name
