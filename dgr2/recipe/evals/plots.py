"""Training curves from run logs: ``python -m dgr2.recipe.evals.plots runs/ar runs/cft --out docs/training-curves.png``.

One column per run: loss per step, and validation NDCG@10, raw validity and the trace entries written
exactly where measured; for a run that trains validity, also its unconstrained raw validity and the
probability it puts on banned slots; for an RL run, the share of its groups that carried no reward spread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dgr2.plotting import pyplot, save
from dgr2.records import read_json_lines


def read_log(run_dir: str | Path) -> list[dict]:
    return read_json_lines(Path(run_dir) / "log.jsonl")


def plot(run_dirs: list[str], out: str) -> list[list[str]]:
    """Writes ``out``; returns each column's validation curves by label."""
    fig, axes = pyplot().subplots(2, len(run_dirs), figsize=(5 * len(run_dirs), 6), squeeze=False)
    for col, run in enumerate(run_dirs):
        log = read_log(run)
        stage = log[0].get("stage", Path(run).name) if log else Path(run).name
        steps = [r["step"] for r in log]
        ax = axes[0][col]
        ax.plot(steps, [r["loss"] for r in log], lw=0.6)
        name = Path(run).name
        ax.set_title(f"{stage}: training loss" if name.lower() == stage.lower() else f"{stage} ({name}): training loss")
        ax.set_xlabel("step")
        val = [r for r in log if "val_ndcg@10" in r]
        ax = axes[1][col]
        ax.plot([r["step"] for r in val], [r["val_ndcg@10"] for r in val], "o-", label="val NDCG@10")
        ax.plot([r["step"] for r in val], [r["val_valid_raw"] for r in val], "s--", label="val raw validity")
        traced = [r for r in val if (r.get("val_trace") or {}).get("entries_exact") is not None]
        if traced:  # how much of the rule's trace the model writes exactly: what a conversion relearns first
            ax.plot([r["step"] for r in traced], [r["val_trace"]["entries_exact"] for r in traced], "^:",
                    label="val trace entries exact")
        free = [r for r in val if r.get("val_unconstrained")]
        if free:  # what the model writes without the answer constraint: the curve of learned validity
            ax.plot([r["step"] for r in free], [r["val_unconstrained"]["valid_raw"] for r in free], "x-",
                    label="val raw validity, unconstrained")
            probed = [r for r in free if "banned_mass" in r["val_unconstrained"]]
            if probed:
                ax.plot([r["step"] for r in probed], [r["val_unconstrained"]["banned_mass"]["ar"] for r in probed],
                        "d-.", label="mass on banned slots (AR view)")
        signal = [r for r in val if r.get("train_flat_groups") is not None]
        if signal:  # an RL run's signal: a group whose rollouts all earned one reward carries no gradient
            ax.plot([r["step"] for r in signal], [r["train_flat_groups"] for r in signal], "v-",
                    label="RL groups with no reward spread")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("step")
        ax.legend(loc="center right")
    fig.tight_layout()
    drawn = [[line.get_label() for line in ax.get_lines()] for ax in axes[1]]
    save(fig, out, dpi=110)
    return drawn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", help="run folders holding log.jsonl")
    p.add_argument("--out", default="docs/training-curves.png", help="PNG to write")
    args = p.parse_args()
    plot(args.runs, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
