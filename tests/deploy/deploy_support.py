"""Helpers of the deploy tests: where deploy/ lives, the tools they run, the metric names the service exports."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from dgr2.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str | None:
    """A command from this venv's bin (the pip-installed tools), else from PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def need(name: str, how: str) -> str:
    """The path of a real tool a deploy test runs (promtool, kubectl, hadolint, prometheus).

    Skipped, with the reason and the install command, only on a developer machine without it; under
    CI (``CI`` set, where ``.ci/run`` installs every one) a missing tool fails the test instead."""
    path = tool(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed ({how}); CI must install it")
        pytest.skip(f"{name} is not installed on this developer machine ({how})")
    return path


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
