"""Reliability and security tests: they run on the service harness of ``tests/service/conftest.py``
(tiny random-init checkpoints in a temp store, a real uvicorn server on a loopback socket), loaded
here under its own module name so both packages share one set of helpers.

Each test records the figures it measured with the ``figures`` fixture; they are printed in the
terminal summary (and written as JSON to ``$DGR2_RELIABILITY_FIGURES`` when set), which is where
the numbers in ``docs/reliability.md`` come from.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

_HARNESS = Path(__file__).resolve().parents[1] / "service" / "conftest.py"
_spec = importlib.util.spec_from_file_location("dgr2_service_harness", _HARNESS)
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness
_spec.loader.exec_module(harness)

# the harness fixtures, re-exported so pytest finds them for this package
_no_service_env = harness._no_service_env
_one_torch_thread = harness._one_torch_thread
shared_store = harness.shared_store
h = harness.h

_FIGURES: dict[str, dict] = {}


@pytest.fixture()
def figures(request) -> dict:
    """A dict the test fills with what it measured; reported under the test's name."""
    out: dict = {}
    _FIGURES[request.node.name] = out
    return out


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def pytest_terminal_summary(terminalreporter) -> None:
    figures = {name: f for name, f in _FIGURES.items() if f}
    if not figures:
        return
    terminalreporter.section("reliability figures")
    for name, f in figures.items():
        terminalreporter.write_line(f"{name}: {json.dumps(f, sort_keys=True)}")
    target = os.environ.get("DGR2_RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
