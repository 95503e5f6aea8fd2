"""``dgr2 train <stage>``: one subcommand per recipe stage, each a module with ``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import importlib

STAGES = {
    "ar": ("dgr2.recipe.train_ar", "train the AR re-ranker from scratch (SFT on traces and rankings)"),
    "cft": ("dgr2.recipe.train_cft", "conversion fine-tuning: AR weights -> block-diffusion re-ranker"),
    "opd": ("dgr2.recipe.train_opd", "on-policy distillation from the frozen AR teacher"),
    "rl": ("dgr2.recipe.train_rl", "GRPO-style RL against the NDCG@10 ranking reward"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stage", required=True)
    for name, (module, help_text) in STAGES.items():
        sp = sub.add_parser(name, help=help_text, description=importlib.import_module(module).__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        importlib.import_module(module).add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(STAGES[args.stage][0]).run(args)
