"""A user's mistake ends a dgr2 command with one line on stderr and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys

import pytest

from dgr2.cli import main


@pytest.mark.parametrize("argv, says", [
    (["eval", "--baseline", "pop", "--data-dir", "{tmp}"], "holds no data set"),
    (["eval", "--baseline", "pop", "--split", "test"], "pass --data-dir or set DGR2_DATA_DIR"),
    (["train", "cft", "--from", "beauty-gr2:no-such-version", "--synthetic", "--steps", "1"], "no version or alias"),
    (["model", "verify", "no-such-model:ar"], "no version or alias"),
    (["model", "average", "beauty-gr2:ar", "beauty-gr2:diffusion", "--store", "{tmp}", "--version", "v"],
     "cannot average checkpoints whose configs differ"),
])
def test_a_mistake_is_one_line(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DGR2_DATA_DIR", raising=False)
    monkeypatch.delenv("DGR2_STORE", raising=False)
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and says in err[0] and err[0].startswith("dgr2 "), err


# ----------------------------------------------------------------------------- as a user runs them: real processes
def _dgr2(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DGR2_DATA_DIR", "DGR2_STORE")}
    return subprocess.run([sys.executable, "-m", "dgr2", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _one_line(proc: subprocess.CompletedProcess, says: str) -> None:
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and proc.stdout == "", (proc.returncode, proc.stdout)
    assert len(err) == 1 and says in err[0] and err[0].startswith("dgr2 "), err


@pytest.fixture()
def sports(tmp_path):
    """An S3-Rec release folder of another Amazon catalog (the names Sports' release uses), 12 items."""
    folder = tmp_path / "sports"
    folder.mkdir()
    (folder / "Sports_and_Outdoors.txt").write_text(
        "1 1 2 3 4 5\n2 2 3 6 7\n3 8 9 1 2 10\n4 3 4 11\n5 12 1 5 6\n")
    attrs = {str(i): [20 + i % 3, 1, 2 + i % 2] for i in range(1, 13)}  # brand first, then two categories
    (folder / "Sports_and_Outdoors_item2attributes.json").write_text(json.dumps(attrs))
    return folder


def _add_a_short_user(folder) -> None:
    with open(folder / "Sports_and_Outdoors.txt", "a") as f:
        f.write("6 7 8\n")  # two items: no leave-one-out split


def test_an_s3rec_folder_of_another_catalog_evaluates(sports):
    _add_a_short_user(sports)
    proc = _dgr2("eval", "--baseline", "evidence", "--data-dir", str(sports), "--candidates", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 5  # user 6 has 2 items: left out, and said so on stderr
    assert "left out 1 of 6 users with fewer than 3 interactions" in proc.stderr


def test_data_check_reports_what_the_recipe_reads(sports):
    _add_a_short_user(sports)
    proc = _dgr2("data", "check", "--data-dir", str(sports))
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["layout"] == "s3rec"
    assert (out["users"], out["dropped_users"], out["items"], out["interactions"]) == (5, 1, 12, 21)
    assert (out["items_with_brand"], out["brands"], out["categories"]) == (12, 3, 2)


@pytest.mark.parametrize("spoil, argv, says", [
    (lambda d: (d / "Sports_and_Outdoors.txt").write_text("1 1 2 3\n2 4 5 99\n"), [],
     "Sports_and_Outdoors.txt line 2, field 4: item 99 is not in Sports_and_Outdoors_item2attributes.json"),
    (lambda d: None, ["--candidates", "1"], "argument --candidates: expected a whole number at least 2, got 1"),
    (lambda d: None, ["--candidates", "50"], "lower --candidates to at most 8"),
])
def test_a_bad_folder_file_or_flag_is_one_line(sports, spoil, argv, says):
    spoil(sports)
    _one_line(_dgr2("eval", "--baseline", "evidence", "--data-dir", str(sports), *argv), says)


def test_a_folder_without_its_item_table_is_one_line(sports):
    (sports / "Sports_and_Outdoors_item2attributes.json").unlink()
    _one_line(_dgr2("data", "check", "--data-dir", str(sports)),
              "has Sports_and_Outdoors.txt but no item table: add Sports_and_Outdoors_item2attributes.json")


def test_a_bad_timestamp_names_its_line(tmp_path):
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"item_id": x}) + "\n" for x in "abc"))
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\nu,a,1\nu,b,2021-03-04\nu,c,3\n")
    _one_line(_dgr2("data", "check", "--data-dir", str(tmp_path)),
              "interactions.csv line 3, field timestamp: '2021-03-04' is not a number")


def test_other_commands_answer_a_bad_value_in_one_line(sports, tmp_path):
    _one_line(_dgr2("data", "import", "--data-dir", str(sports), "--out", str(sports / "Sports_and_Outdoors.txt")),
              "give --out a folder you can write")
    _one_line(_dgr2("train", "ar", "--synthetic", "--steps", "0", "--run-dir", str(tmp_path / "r")),
              "argument --steps: expected a whole number at least 1, got 0")
    _one_line(_dgr2("serve", "--store", str(sports / "Sports_and_Outdoors.txt")), "not a folder; give a model store")
    _one_line(_dgr2("eval", "--checkpoint", "beauty-gr2:ar", "--synthetic", "--candidates", "101"),
              "a checkpoint ranks at most 100 candidates")


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """``dgr2 summarize ... | head -1``: the pipe closes before the output is written; exit 0, no traceback."""
    evals = tmp_path / "evals.jsonl"
    evals.write_text("\n".join(json.dumps({"checkpoint": "m", "decoder": "ar", "split": "test", "n": 4,
                                           "neg_seed": s, "ndcg@10": 0.3}) for s in (1, 2)))
    read, write = os.pipe()
    os.close(read)  # every write to the pipe now fails with EPIPE
    env = {k: v for k, v in os.environ.items() if k not in ("DGR2_DATA_DIR", "DGR2_STORE")}
    try:
        proc = subprocess.run([sys.executable, "-m", "dgr2", "summarize", str(evals)], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
