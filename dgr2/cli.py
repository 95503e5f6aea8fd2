"""``dgr2``: one command line for the service, the recipe, evaluation, benchmarks and the model store.

Each subcommand's module is imported only when that subcommand runs, so ``dgr2 --help`` is instant
and a CPU box serving models never imports training code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS = {
    "serve": ("dgr2.service.cli", "run the re-ranking service (FastAPI + uvicorn)"),
    "train": ("dgr2.recipe.cli", "run a stage of the training recipe"),
    "eval": ("dgr2.recipe.evaluate", "evaluate a checkpoint on the leave-one-out split"),
    "compare": ("dgr2.recipe.evals.compare", "paired comparison of two evals from their --resume-file records"),
    "fit-rule": ("dgr2.recipe.fit_rule", "fit the evidence rule's weights and levels on validation users, "
                                         "score it on test users"),
    "probe-validity": ("dgr2.recipe.evals.slot_mass", "teacher-forced: the probability a checkpoint puts on the "
                                                      "slots the slot rule bans, per answer rank"),
    "summarize": ("dgr2.recipe.evals.seed_summary",
                  "mean ± standard error over negative-sampling seeds of dgr2 eval results"),
}
# command groups: group -> (help, {subcommand -> (module[:COMMAND], help)}), e.g. ``dgr2 bench decode``; a
# ``:COMMAND`` names an object of the module with the add_arguments and run of that subcommand
GROUPS = {
    "model": ("manage checkpoints in the model store", {
        "init": ("dgr2.recipe.model_init", "write a random-init AR + diffusion checkpoint pair and alias them"),
        "list": ("dgr2.model_store.commands:LIST", "list models, versions and aliases"),
        "ship": ("dgr2.model_store.commands:SHIP", "copy a checkpoint into a store in shipping form (bf16, no titles)"),
        "average": ("dgr2.model_store.commands:AVERAGE", "average the weights of checkpoints from one training run "
                                                         "(stochastic weight averaging) into a store in shipping form"),
        "graft": ("dgr2.model_store.commands:GRAFT", "BASE + SCALE x (TUNED - TUNED_PARENT): carry a fine-tuning "
                                                     "(e.g. a conversion) to a relative of its parent"),
        "transfer": ("dgr2.recipe.model_transfer", "move a trained checkpoint onto another catalog (a data folder's "
                                                   "vocabulary and catalog): zero-shot, or a start to train from"),
        "record-eval": ("dgr2.model_store.commands:RECORD_EVAL", "add `dgr2 eval --json` results of a checkpoint to "
                                                                 "its manifest (metrics.eval); weights untouched"),
        "verify": ("dgr2.model_store.commands:VERIFY", "verify a checkpoint's hashes and that it loads"),
    }),
    "data": ("read, check and convert data folders (docs/data.md)", {
        "check": ("dgr2.recipe.formats.commands:CHECK", "what the recipe reads from a data folder: layout, users "
                                                        "(and those left out), items, brands, categories"),
        "import": ("dgr2.recipe.formats.commands:IMPORT", "write a data folder in the project's own layout "
                                                          "(interactions.csv + items.jsonl)"),
        "attributes": ("dgr2.recipe.formats.commands:ATTRIBUTES", "how an S3-Rec folder's anonymous attributes "
                                                                  "map to brand and category, and whether the "
                                                                  "brands behave like brands"),
    }),
    "bench": ("run a benchmark (decode throughput, service under load)", {
        "decode": ("dgr2.bench.decode", "decode throughput of AR vs block diffusion on the same prompts and machine"),
        "service": ("dgr2.bench.service_load", "the real server under concurrent load, per decoder"),
    }),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad flag or value answered in one line on stderr (what is wrong, where the flags
    are listed) instead of the usage block; exit status 2 as argparse. Sub-parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dgr2", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        # no help of its own: ``dgr2 NAME --help`` reaches the module's parser with every flag
        sub.add_parser(name, help=help_text, add_help=False).set_defaults(
            module=module, prog=f"dgr2 {name}", description=help_text)
    for group, (group_help, subcommands) in GROUPS.items():
        gsub = sub.add_parser(group, help=group_help).add_subparsers(dest=f"{group}_cmd", required=True,
                                                                     metavar="{" + ",".join(subcommands) + "}")
        for name, (module, help_text) in subcommands.items():
            gsub.add_parser(name, help=help_text, add_help=False).set_defaults(
                module=module, prog=f"dgr2 {group} {name}", description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from dgr2.errors import UserError, print_user_error

    try:
        module_name, _, attr = args.module.partition(":")
        command = importlib.import_module(module_name)
        if attr:
            command = getattr(command, attr)
        sub = OneLineParser(prog=args.prog, description=args.description)
        command.add_arguments(sub)
        parsed = sub.parse_args(rest)
        parsed.command_line = shlex.join([*args.prog.split(), *rest])  # what a benchmark records it ran
        return command.run(parsed)
    except UserError as e:  # a checkpoint, a data folder or file, a resume file: one line, no traceback
        return print_user_error(args.prog, e)
    except BrokenPipeError:  # the reader left (``dgr2 summarize ... | head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
