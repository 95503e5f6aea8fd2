"""A user's mistake ends a dgr2 command with one line on stderr and a non-zero exit, never a traceback."""

import pytest

from dgr2.cli import main


@pytest.mark.parametrize("argv, says", [
    (["eval", "--baseline", "pop", "--data-dir", "{tmp}"], "lacks Beauty.txt"),
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
