"""The ablation table: rows in recipe order, mean ± s.e. over seeds, speed ratios within a seed."""

from dgr2.recipe.evals.ablation import eval_command, main, rows, table


def rec(label, seed, ndcg, speed, valid=1.0, **extra):
    return {"label": label, "neg_seed": seed, "n": 10, "ndcg@10": ndcg, "hr@10": 0.5, "mrr": 0.3, "valid_raw": valid,
            "invalid_raw": {"duplicates": 1 - valid, "missing": 1 - valid, "out_of_set": 0.0, "malformed": 0.0},
            "tokens_per_forward": 1.0, "decode_tokens_per_s": speed, **extra}


def test_table_rows_means_and_same_seed_ratios():
    rows = [rec("+CFT", 1, 0.2, 300.0), rec("AR", 1, 0.3, 100.0), rec("AR", 2, 0.5, 200.0), rec("+CFT", 2, 0.4, 400.0)]
    accuracy, writing = (t.splitlines() for t in table(rows).split("\n\n"))
    assert accuracy[2].startswith("| AR | 10 × 2 | 0.4000 ± 0.1000 |")
    assert accuracy[3].startswith("| +CFT | 10 × 2 | 0.3000 ± 0.1000 |")
    # ratios 3.0 and 2.0, each against its own seed's AR run; no trace lengths in these records
    assert writing[3].startswith("| +CFT |") and writing[3].endswith("| 2.50 ± 0.50 | n/a |")


def test_unconstrained_rows_show_repairs_before_and_after_and_trace_lengths():
    """The referee's columns: NDCG@10 as decoded beside the guard's, the answers it repaired and their
    faults, HR@1, and the trace length distribution (a collapsed trace shows as a short p5)."""
    lengths = {"p5": 300, "p50": 330, "p95": 400}
    rows = [rec("+CFT, unconstrained", s, 0.30, 100.0, valid=0.3, **{
        "ndcg@10_before_repair": 0.26, "hr@1": 0.2, "trace_tokens": lengths}) for s in (1, 2)]
    accuracy, writing = (t.splitlines() for t in table(rows).split("\n\n"))
    assert accuracy[2] == "| +CFT, unconstrained | 10 × 2 | 0.3000 ± 0.0000 | 0.2600 ± 0.0000 | 0.200 ± 0.000 " \
                          "| 0.500 ± 0.000 | 0.300 ± 0.000 |"
    assert writing[2].startswith("| +CFT, unconstrained | 14 of 20 | 0.700 / 0.700 / 0.000 / 0.000 |")
    assert writing[2].endswith("| 300 / 330 / 400 |")
    assert all(line.count("|") == 8 for line in accuracy + writing)  # 7 columns each


def test_eval_command_is_the_documented_cli():
    class A:
        name, split, batch_size, store, limit = "beauty-gr2", "test", 50, "runs/store", 200
    assert eval_command(A, "opd", "diffusion", 7) == [
        "dgr2", "eval", "--checkpoint", "beauty-gr2:opd", "--decoder", "diffusion", "--split", "test",
        "--candidates", "100", "--neg-seed", "7", "--batch-size", "50", "--json", "--store", "runs/store",
        "--limit", "200"]

    class S:
        name, split, batch_size, store, limit, sample = "beauty-gr2", "test", 50, None, None, 1000
    assert eval_command(S, "ar", "ar", 1)[-2:] == ["--sample", "1000"]


def test_a_missing_data_folder_is_one_line_and_no_row(tmp_path, capsys):
    """A data folder that is not there stops the ablation before any row, in one line that names it."""
    out = tmp_path / "ablation.jsonl"
    missing = tmp_path / "no-such-folder"
    assert main(["--out", str(out), "--data-dir", str(missing), "--rows", "AR", "--seeds", "1", "--limit", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(f"--data-dir {missing}")  # the row's command, as it would have run
    assert err[1].startswith("python -m dgr2.recipe.evals.ablation: error: ") and str(missing) in err[1]
    assert len(err) == 2 and not out.exists()


def test_answer_threshold_rows_follow_their_base_row():
    class A:
        answer_threshold, answer_threshold_rows = 0.0, ["+CFT"]
    extra = [r for r in rows(A) if r[3]]
    assert extra == [("+CFT, answer threshold 0", "cft", "diffusion", ["--answer-threshold", "0.0"])]
    records = [rec("AR", 1, 0.3, 100.0), rec("+CFT, answer threshold 0", 1, 0.3, 250.0), rec("+CFT", 1, 0.3, 120.0)]
    lines = table(records).split("\n\n")[0].splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| AR", "| +CFT", "| +CFT, answer threshold 0"]


def test_rows_and_device_select_what_runs():
    class A:
        rows, answer_threshold, answer_threshold_rows = ["AR", "+CFT"], 0.0, ["+CFT", "+CFT+OPD"]
        unconstrained_rows = ["+CFT", "naive conversion"]
    assert [r[0] for r in rows(A)] == ["AR", "+CFT", "+CFT, answer threshold 0", "+CFT, unconstrained"]
    assert rows(A)[-1][3] == ["--unconstrained"]

    class B:
        name, split, batch_size, store, limit, device = "beauty-gr2", "test", 512, None, None, "cuda"
    assert eval_command(B, "ar", "ar", 1)[-2:] == ["--device", "cuda"]


def test_answer_threshold_only_replaces_its_base_rows():
    class A:
        answer_threshold, answer_threshold_rows, answer_threshold_only = 0.0, ["+CFT", "+CFT+OPD+RL"], True
    assert [r[0] for r in rows(A)] == ["AR", "naive conversion", "+CFT+OPD", "+CFT, answer threshold 0",
                                       "+CFT+OPD+RL, answer threshold 0"]


def test_stage_flag_names_a_checkpoint_per_row_and_refuses_unknown_rows(tmp_path, capsys):
    import pytest

    from dgr2.recipe.evals.ablation import main, stage_checkpoint

    class A:
        rows, unconstrained_rows, name = ["+CFT", "+CFT+OPD"], ["+CFT+OPD"], "beauty-gr2"
        stage = {"+CFT+OPD": "candidates/beauty-gr2/opd-x"}
    chosen = rows(A)
    assert [(label, ref) for label, ref, _, _ in chosen] == [
        ("+CFT", "cft"), ("+CFT+OPD", "candidates/beauty-gr2/opd-x"),
        ("+CFT+OPD, unconstrained", "candidates/beauty-gr2/opd-x")]
    assert eval_command(type("E", (A,), {"split": "test", "batch_size": 25, "store": None, "limit": None}),
                        "candidates/beauty-gr2/opd-x", "diffusion", 1)[3] == "candidates/beauty-gr2/opd-x"
    assert stage_checkpoint("+CFT=beauty-gr2:diffusion") == ("+CFT", "beauty-gr2:diffusion")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "a.jsonl"), "--stage", "+OPD=x", "--table"])
    assert "unknown row(s) ['+OPD']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "a.jsonl"), "--stage", "+CFT", "--table"])
    assert "expected LABEL=CHECKPOINT" in capsys.readouterr().err


def test_resume_files_give_each_stage_a_paired_difference_over_seeds(tmp_path):
    """Each stage against the one before it in its own decoding mode and against AR, each user averaged over the
    seeds both rows hold (hand-computed: HR@1 per user)."""
    from dgr2.recipe.evals.ablation import paired_table, report, resume_path, stage_pairs
    from dgr2.recipe.evals.eval_tally import ResumeFile, Tally

    assert resume_path("d", "+CFT+OPD, unconstrained", 1).name == "cft-opd-unconstrained-1.resume.jsonl"
    assert stage_pairs(["AR", "+CFT", "+CFT+OPD", "+CFT, unconstrained", "+CFT+OPD, unconstrained"]) == [
        ("+CFT", "AR"), ("+CFT+OPD", "+CFT"), ("+CFT+OPD", "AR"),
        ("+CFT, unconstrained", "AR"), ("+CFT+OPD, unconstrained", "+CFT, unconstrained"),
        ("+CFT+OPD, unconstrained", "AR")]
    ranks = {  # per label and seed, users u1..u4 (rank 0 = the target first)
        ("AR", 1): [0, 0, 5, 20], ("AR", 2): [0, 1, 5, 20],
        ("+CFT", 1): [0, 3, 0, 20], ("+CFT", 2): [1, 3, 0, 20],
        ("+CFT+OPD", 1): [0, 0, 0, 20],  # one seed only: paired on that seed alone
    }
    records = []
    for (label, seed), rs in ranks.items():
        path = resume_path(str(tmp_path), label, seed)
        f = ResumeFile(path, {"checkpoint": label, "split": "test", "candidates": 100, "neg_seed": seed})
        f.append(Tally(users=["u1", "u2", "u3", "u4"], ranks=rs))
        records.append(rec(label, seed, 0.3, 100.0, resume_file=str(path)))
    lines = paired_table(records).splitlines()
    assert [line.split(" | ")[:3] for line in lines[2:]] == [
        ["| +CFT", "AR", "4 × 2"], ["| +CFT+OPD", "+CFT", "4 × 1"], ["| +CFT+OPD", "AR", "4 × 1"]]
    # HR@1, +CFT - AR, users averaged over seeds: u1 (0.5 - 1), u2 (0 - 0.5), u3 (1 - 0), u4 0 -> mean 0
    hr1 = lines[2].split(" | ")[4]
    assert hr1.startswith("+0.0000 ± 0.")
    assert lines[4].split(" | ")[4].startswith("+0.2500 ± ")  # +OPD vs AR on seed 1: u3 gains rank 1
    assert report(records).endswith(paired_table(records))
    assert paired_table([rec("AR", 1, 0.3, 100.0)]) == ""
