"""Reading the project's JSON records: eval results (one object, or JSON lines) and training logs."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_lines(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The objects of a JSON-lines file (a run's ``log.jsonl``, an ablation file); blank lines skipped."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON lines ({e})") from None


def read_json_objects(path: str | Path) -> list[dict]:
    """One ``dgr2 eval --json`` object, or JSON lines of them (an ablation file): also what
    ``dgr2 model ship --eval`` records. ValueError, naming the file, on anything else."""
    text = Path(path).read_text()
    try:
        objs = [json.loads(text)]
    except json.JSONDecodeError:  # several objects: JSON lines
        try:
            objs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a dgr2 eval JSON object or JSON lines ({e})") from None
    if not objs or not all(isinstance(o, dict) for o in objs):
        raise ValueError(f"{path}: expected JSON objects")
    return objs
