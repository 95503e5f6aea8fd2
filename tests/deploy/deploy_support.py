"""Helpers of the deploy tests: where deploy/ lives and the metric names the service exports. The tools they run
(promtool, kubectl, hadolint, prometheus) come from the ``need`` fixture of tests/conftest.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from dgr2.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def exported_series() -> set[str]:
    """Every series name the service's /metrics carries once each metric has a sample (a histogram with a
    negative bucket, like dgr2_shadow_agreement, has no _sum)."""
    m = Metrics("m")
    for metric in vars(m).values():
        if isinstance(metric, MetricWrapperBase):
            child = metric.labels(*["x"] * len(metric._labelnames))
            getattr(child, {"counter": "inc", "gauge": "set", "histogram": "observe"}[metric._type])(1)
    return {s.name for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


def metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\bdgr2_[a-z0-9_]+\b", promql))
