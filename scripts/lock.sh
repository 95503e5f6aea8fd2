#!/usr/bin/env bash
# Regenerate the locked dependency set from pyproject.toml (`make lock`; `make lock-upgrade` passes --upgrade):
#   requirements/test.lock     every package of `make test`, pinned with sha256 hashes
#   requirements/runtime.lock  the subset `make serve` and the Docker image install, at the same versions
#   requirements/torch-cpu.lock  torch, the one pin whose build depends on the device: this CPU wheel here and in
#                                the CPU image; GPU users install the CUDA build of the same version first
# The hashes are of the files the configured package indexes serve. Check an upgrade with `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=.venv-lock
[[ -x $tool/bin/pip-compile ]] || { python3 -m venv "$tool" && "$tool/bin/pip" install -q "pip-tools==7.7.0"; }
compile=("$tool/bin/pip-compile" -q --generate-hashes --strip-extras --allow-unsafe --no-header "$@" pyproject.toml)
"${compile[@]}" --extra test -o requirements/test.lock
"${compile[@]}" -c requirements/test.lock -o requirements/runtime.lock
# move torch's entry (its pin line, hash lines and "via" comments) out of the two locks into its own file
"$tool/bin/python" - <<'PY'
import re
from pathlib import Path

def split(text):
    blocks = re.split(r"\n(?=\S)", text.strip())
    torch = [b for b in blocks if b.startswith("torch==")]
    rest = [b for b in blocks if not b.startswith("torch==")]
    return "\n".join(torch) + "\n", "\n".join(rest) + "\n"

for name in ("test", "runtime"):
    path = Path(f"requirements/{name}.lock")
    torch, rest = split(path.read_text())
    path.write_text(rest)
Path("requirements/torch-cpu.lock").write_text(torch)
PY
echo "locked: $(grep -c '^[a-z]' requirements/test.lock) test, $(grep -c '^[a-z]' requirements/runtime.lock) runtime packages + $(head -1 requirements/torch-cpu.lock)"
