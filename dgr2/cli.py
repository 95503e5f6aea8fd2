"""``dgr2``: one command line for the service, the recipe, evaluation, benchmarks and the model store.

Each subcommand's module is imported only when that subcommand runs, so ``dgr2 --help`` is instant
and a CPU box serving models never imports training code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS = {
    "serve": ("dgr2.service.cli", "run the re-ranking service (FastAPI + uvicorn)"),
    "train": ("dgr2.recipe.cli", "run a stage of the training recipe"),
    "eval": ("dgr2.recipe.evaluate", "evaluate a checkpoint on the leave-one-out split"),
    "compare": ("dgr2.recipe.compare", "paired comparison of two evals from their --resume-file records"),
    "summarize": ("dgr2.recipe.seed_summary",
                  "mean ± standard error over negative-sampling seeds of dgr2 eval results"),
}
# command groups: group -> (help, {subcommand -> (module, help)}), e.g. ``dgr2 bench decode``
GROUPS = {
    "bench": ("run a benchmark (decode throughput, service under load)", {
        "decode": ("dgr2.bench.decode", "decode throughput of AR vs block diffusion on the same prompts and machine"),
        "service": ("dgr2.bench.service_load", "the real server under concurrent load, per decoder"),
    }),
}


def _model_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="manage checkpoints in the model store")
    msub = p.add_subparsers(dest="model_cmd", required=True)
    store_help = "model store root (default: $DGR2_STORE or the shipped store inside the package)"

    init = msub.add_parser("init", help="write a random-init AR + diffusion checkpoint pair and alias them")
    init.add_argument("--preset", default="tiny", help="architecture preset: tiny, small or base (default tiny)")
    init.add_argument("--name", default=None, help="model name in the store (default: the shipped default name)")
    init.add_argument("--store", default=None, help=store_help)
    init.add_argument("--seed", type=int, default=0, help="weight-init seed")
    init.add_argument("--data-dir", default=None,
                      help="build the vocabulary from the Amazon Beauty catalog here (else $DGR2_DATA_DIR, "
                           "else a small synthetic catalog)")
    init.set_defaults(func=_model_init)

    ls = msub.add_parser("list", help="list models, versions and aliases")
    ls.add_argument("--store", default=None, help=store_help)
    ls.set_defaults(func=_model_list)

    ship = msub.add_parser("ship", help="copy a checkpoint into a store in shipping form (bf16, no titles)")
    ship.add_argument("checkpoint", help="NAME[:VERSION_OR_ALIAS] in --from-store, or a checkpoint folder")
    _shipping_arguments(ship, store_help, what="the copy", dtype_help="loading converts to float32 on CPU")
    ship.add_argument("--threshold", type=float, default=None, help="diffusion threshold to store in the copy")
    ship.add_argument("--answer-threshold", type=float, default=None,
                      help="diffusion threshold inside the answer to store in the copy (1 = off)")
    ship.set_defaults(func=_model_ship)

    avg = msub.add_parser("average", help="average the weights of checkpoints from one training run "
                                           "(stochastic weight averaging) into a store in shipping form")
    avg.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                     help="two or more: NAME[:VERSION_OR_ALIAS] in --from-store, or checkpoint folders; they must "
                          "share architecture, vocabulary, stage and data (the catalog comes from the last)")
    _shipping_arguments(avg, store_help, what="the average", dtype_help="the mean itself is taken in float32")
    avg.set_defaults(func=_model_average)

    ver = msub.add_parser("verify", help="verify a checkpoint's hashes and that it loads")
    ver.add_argument("checkpoint", help="NAME[:VERSION_OR_ALIAS] in the store, or a checkpoint folder")
    ver.add_argument("--store", default=None, help=store_help)
    ver.set_defaults(func=_model_verify)


def _shipping_arguments(p: argparse.ArgumentParser, store_help: str, what: str, dtype_help: str) -> None:
    """Source store, destination and manifest flags shared by ``model ship`` and ``model average``."""
    p.add_argument("--from-store", default=None, help="store holding the source (default: the shipped store)")
    p.add_argument("--store", default=None, help=store_help + "; the destination")
    p.add_argument("--name", default=None, help="model name at the destination (default: the shipped name)")
    p.add_argument("--version", required=True, help="version name at the destination")
    p.add_argument("--alias", action="append", default=[], help=f"alias to point at {what} (repeatable)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help=f"weight dtype on disk ({dtype_help})")
    p.add_argument("--eval", action="append", default=[], metavar="FILE",
                   help=f"a `dgr2 eval --json` output of {what} (JSON object, or JSON lines) to record in the "
                        "manifest under metrics.eval (repeatable)")


def _store(args):
    from dgr2.model_store import open_store

    return open_store(args.store)


def resolve_checkpoint(ref: str, store_root: str | None = None):
    """``NAME[:REF]`` in the store (REF defaults to ``ar``), or a path to a checkpoint folder."""
    from pathlib import Path

    from dgr2.model_store import open_store

    if Path(ref).is_dir():
        return Path(ref)
    name, _, version = ref.partition(":")
    return open_store(store_root).resolve(name, version or "ar")


def _model_init(args) -> int:
    from dgr2.model_store import DEFAULT_MODEL
    from dgr2.model_store.init import init_pair

    data_dir = args.data_dir or os.environ.get("DGR2_DATA_DIR")
    if data_dir:
        from dgr2.recipe.data import load_catalog

        catalog = load_catalog(data_dir)
    else:
        from dgr2.recipe.synthetic import synthetic_data

        catalog = synthetic_data().catalog
    paths = init_pair(_store(args), args.name or DEFAULT_MODEL, catalog, args.preset, args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def _model_list(args) -> int:
    store = _store(args)
    out = {name: {"versions": store.versions(name), "aliases": store.aliases(name)} for name in store.names()}
    print(json.dumps(out, indent=2))
    return 0


def _json_objects(path: str) -> list[dict]:
    """One JSON object, or JSON lines, from ``path``; a clear exit on anything else."""
    from dgr2.recipe.seed_summary import read_json_objects

    try:
        return read_json_objects(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--eval {e}") from None


def _model_ship(args) -> int:
    import torch

    from dgr2.model_store import DEFAULT_MODEL
    from dgr2.model_store.export import export_checkpoint

    src = resolve_checkpoint(args.checkpoint, args.from_store)
    evals = [obj for f in args.eval for obj in _json_objects(f)]
    path = export_checkpoint(src, _store(args), args.name or DEFAULT_MODEL, args.version, args.alias,
                             dtype=getattr(torch, args.dtype), evals=evals,
                             decode={k: v for k, v in (("threshold", args.threshold),
                                                       ("answer_threshold", args.answer_threshold)) if v is not None})
    print(json.dumps({"path": str(path), "aliases": args.alias}, indent=2))
    return 0


def _model_average(args) -> int:
    import torch

    from dgr2.model_store import DEFAULT_MODEL
    from dgr2.model_store.average import average_checkpoints

    if len(args.checkpoints) < 2:
        raise SystemExit("dgr2 model average: give at least two checkpoints")
    srcs = [resolve_checkpoint(ref, args.from_store) for ref in args.checkpoints]
    evals = [obj for f in args.eval for obj in _json_objects(f)]
    path = average_checkpoints(srcs, _store(args), args.name or DEFAULT_MODEL, args.version, args.alias,
                               dtype=getattr(torch, args.dtype), evals=evals)
    print(json.dumps({"path": str(path), "averaged": [str(s) for s in srcs], "aliases": args.alias}, indent=2))
    return 0


def _model_verify(args) -> int:
    from dgr2.model_store import load_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint, args.store))
    print(json.dumps({"path": str(ckpt.path), "stage": ckpt.manifest.get("stage"), "decoder": ckpt.config.decoder,
                      "parameters": sum(p.numel() for p in ckpt.model.parameters()), "ok": True}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgr2", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _model_commands(sub)
    for name, (module, help_text) in COMMANDS.items():
        # no help of its own: ``dgr2 NAME --help`` reaches the module's parser with every flag
        sub.add_parser(name, help=help_text, add_help=False).set_defaults(
            module=module, prog=f"dgr2 {name}", description=help_text)
    for group, (group_help, subcommands) in GROUPS.items():
        gsub = sub.add_parser(group, help=group_help).add_subparsers(dest=f"{group}_cmd", required=True)
        for name, (module, help_text) in subcommands.items():
            gsub.add_parser(name, help=help_text, add_help=False).set_defaults(
                module=module, prog=f"dgr2 {group} {name}", description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from dgr2.model_store import CheckpointError

    try:
        if hasattr(args, "func"):
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            return args.func(args)
        module = importlib.import_module(args.module)
        sub = argparse.ArgumentParser(prog=args.prog, description=args.description)
        module.add_arguments(sub)
        return module.run(sub.parse_args(rest))
    except CheckpointError as e:
        print(f"dgr2: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
