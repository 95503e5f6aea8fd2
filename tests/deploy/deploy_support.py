"""Helpers of the deploy tests: where deploy/ lives, the tools they run, the metric names the service exports."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str | None:
    """A command from this venv's bin (the pip-installed tools), else from PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def need(name: str, how: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({how})")
    return path


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def exported_series() -> set[str]:
    """Every series name the service's /metrics can carry (counters as *_total, histograms' parts)."""
    names = set()
    for family in Metrics("m").registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\bdgr2_[a-z0-9_]+\b", promql))
