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

from dgr2.bench.service_load import free_port

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
hold = harness.hold

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


@pytest.fixture(scope="session")
def rss():
    """``rss(pid)``: resident set size in bytes."""
    return rss_bytes


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


# ----------------------------------------------------------------------------- a real `dgr2 serve` process
ROOT = Path(__file__).resolve().parents[2]
# `dgr2 serve` in a child process; SLOW_S > 0 makes every batched decode sleep that long first (what the
# in-process tests do with Server.slow_down); while the file HOLD exists, every decode waits for it to go
# (at most 120 s), so a test holds requests in flight for as long as it needs (Server.hold in-process), and
# a held decode touches HOLD.held, so the test knows one is in flight
_LAUNCH = """
import os, sys, time
slow = float(os.environ.pop("DGR2_TEST_SLOW_S", "0"))
hold = os.environ.pop("DGR2_TEST_HOLD", "")
if slow > 0 or hold:
    from dgr2.model import engine
    rank = engine.Reranker.rank
    def slowed(self, requests):
        end = time.monotonic() + 120
        if hold and os.path.exists(hold):
            open(hold + ".held", "w").close()
        while hold and os.path.exists(hold) and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(slow)
        return rank(self, requests)
    engine.Reranker.rank = slowed
if os.environ.pop("DGR2_TEST_FAIL_WARM_UP", ""):
    from dgr2.service import runtime
    def failing(models):
        raise RuntimeError("planted warm-up failure")
    runtime.warm_up = failing
import dgr2.cli
sys.exit(dgr2.cli.main(["serve", *sys.argv[1:]]))
"""


class ServeProcess:
    """``dgr2 serve`` on a free loopback port: ``proc``, ``url``, ``log`` (its stdout and stderr). With
    ``hold``, decodes wait while that file exists (create it after :meth:`wait_ready`, delete it to let
    them go); the first held decode creates ``hold.held``."""

    def __init__(self, store_root: Path, log: Path, *flags: str, slow_s: float = 0.0,
                 fail_warm_up: bool = False, hold: Path | None = None) -> None:
        import subprocess

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("DGR2_")}
        env.update(DGR2_TEST_SLOW_S=str(slow_s), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        if fail_warm_up:
            env["DGR2_TEST_FAIL_WARM_UP"] = "1"
        if hold is not None:
            env["DGR2_TEST_HOLD"] = str(hold)
        cmd = [sys.executable, "-c", _LAUNCH, "--store", str(store_root), "--model", harness.MODEL,
               "--port", str(self.port), "--torch-threads", "1", "--log-level", "warning", *flags]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        def ready() -> bool:
            assert self.proc.poll() is None, f"dgr2 serve exited ({self.proc.returncode}):\n{self.output()}"
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

        harness.wait_for(ready, timeout, "dgr2 serve ready")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture()
def serve_process(tmp_path):
    """Start ``dgr2 serve`` processes; each is killed at the end of the test if still running."""
    started: list[ServeProcess] = []

    def start(store_root: Path, *flags: str, slow_s: float = 0.0, fail_warm_up: bool = False,
              hold: Path | None = None) -> ServeProcess:
        p = ServeProcess(store_root, tmp_path / f"serve-{len(started)}.log", *flags, slow_s=slow_s,
                         fail_warm_up=fail_warm_up, hold=hold)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
