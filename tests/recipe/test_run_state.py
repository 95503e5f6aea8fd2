"""scripts/lib/run_state.sh: a run's state saved into the repository comes back on a new machine byte for
byte, with its log up to the saved step and one record per step; a live run that is further along is
never replaced by an older saved state."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

LIB = Path(__file__).resolve().parents[2] / "scripts" / "lib" / "run_state.sh"


def shell(script: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source {LIB}; {script}"], cwd=cwd, env=env,
                          check=True, capture_output=True, text=True, timeout=120).stdout


def write_log(path: Path, steps: list[int]) -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "try": i}) + "\n" for i, s in enumerate(steps)))


def test_a_saved_state_comes_back_on_a_new_machine(tmp_path):
    run, saved, fresh = tmp_path / "run", tmp_path / "saved", tmp_path / "new-machine-run"
    run.mkdir()
    # a state big enough for several 25 MB parts, saved at step 7 of a run that had logged steps 5-7 twice
    torch.save({"step": 7, "model": torch.arange(9_000_000, dtype=torch.float64)}, run / "state.pt")
    write_log(run / "log.jsonl", [1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9])
    assert "saved step 7" in shell(f"snapshot {run} {saved}", tmp_path)
    parts = sorted(p.name for p in saved.glob("state.pt.part-*"))
    assert parts == ["state.pt.part-00", "state.pt.part-01", "state.pt.part-02"]
    log = [json.loads(line) for line in (saved / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["try"] for r in log[4:]] == [7, 8, 9]  # the latest record of a step logged twice
    assert "continuing from the repository's state at step 7" in shell(f"join_saved {fresh} {saved}", tmp_path)
    assert (fresh / "state.pt").read_bytes() == (run / "state.pt").read_bytes()
    assert (fresh / "log.jsonl").read_text() == (saved / "log.jsonl").read_text()
    assert shell(f"run_status {fresh} {saved}", tmp_path).splitlines()[0] == "run: step 7; repository: step 7"


def test_a_live_run_further_along_is_kept(tmp_path):
    run, saved = tmp_path / "run", tmp_path / "saved"
    run.mkdir()
    torch.save({"step": 4}, run / "state.pt")
    write_log(run / "log.jsonl", [1, 2, 3, 4])
    shell(f"snapshot {run} {saved}", tmp_path)
    torch.save({"step": 9}, run / "state.pt")  # the live run went on
    write_log(run / "log.jsonl", list(range(1, 10)))
    before = (run / "state.pt").read_bytes()
    assert shell(f"join_saved {run} {saved}", tmp_path) == ""
    assert (run / "state.pt").read_bytes() == before
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 9
