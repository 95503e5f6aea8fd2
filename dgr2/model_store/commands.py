"""``dgr2 model list|ship|average|graft|record-eval|verify``: the model store's commands.

Each is a :class:`Command` (its flags and its handler); ``dgr2.cli`` routes ``dgr2 model NAME`` here.
``dgr2 model init`` builds a vocabulary from a catalog, so it lives with the data, in the recipe.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dgr2.model_store import DEFAULT_MODEL, load_checkpoint, open_store, resolve_checkpoint
from dgr2.records import read_json_objects

STORE_HELP = "model store root (default: $DGR2_STORE or the shipped store inside the package)"


@dataclass(frozen=True)
class Command:
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _print(obj: dict) -> int:
    print(json.dumps(obj, indent=2))
    return 0


def _shipping_arguments(p: argparse.ArgumentParser, what: str, dtype_help: str) -> None:
    """Source store, destination and manifest flags shared by ``ship``, ``average`` and ``graft``."""
    p.add_argument("--from-store", default=None, help="store holding the source (default: the shipped store)")
    p.add_argument("--store", default=None, help=STORE_HELP + "; the destination")
    p.add_argument("--name", default=None, help="model name at the destination (default: the shipped name)")
    p.add_argument("--version", required=True, help="version name at the destination")
    p.add_argument("--alias", action="append", default=[], help=f"alias to point at {what} (repeatable)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help=f"weight dtype on disk ({dtype_help})")
    p.add_argument("--eval", action="append", default=[], metavar="FILE",
                   help=f"a `dgr2 eval --json` output of {what} (JSON object, or JSON lines) to record in the "
                        "manifest under metrics.eval (repeatable)")


def _evals(args: argparse.Namespace) -> list[dict]:
    try:
        return [obj for f in args.eval for obj in read_json_objects(f)]
    except (OSError, ValueError) as e:
        raise SystemExit(f"--eval {e}") from None


def _destination(args: argparse.Namespace) -> dict:
    return {"store": open_store(args.store), "name": args.name or DEFAULT_MODEL, "version": args.version,
            "aliases": args.alias}


# ----------------------------------------------------------------------------- list
def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help=STORE_HELP)


def _list(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    return _print({name: {"versions": store.versions(name), "aliases": store.aliases(name)} for name in store.names()})


# ----------------------------------------------------------------------------- ship
def _ship_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="NAME[:VERSION_OR_ALIAS] in --from-store, or a checkpoint folder")
    _shipping_arguments(p, what="the copy", dtype_help="loading converts to float32 on CPU")
    p.add_argument("--threshold", type=float, default=None, help="diffusion threshold to store in the copy")
    p.add_argument("--answer-threshold", type=float, default=None,
                   help="diffusion threshold inside the answer to store in the copy (1 = off)")


def _ship(args: argparse.Namespace) -> int:
    from dgr2.model_store.export import export_checkpoint

    dest = _destination(args)
    decode = {k: v for k, v in (("threshold", args.threshold), ("answer_threshold", args.answer_threshold))
              if v is not None}
    path = export_checkpoint(resolve_checkpoint(args.checkpoint, args.from_store), dest["store"], dest["name"],
                             dest["version"], dest["aliases"], dtype=getattr(torch, args.dtype), evals=_evals(args),
                             decode=decode)
    return _print({"path": str(path), "aliases": args.alias})


# ----------------------------------------------------------------------------- average
def _average_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="two or more: NAME[:VERSION_OR_ALIAS] in --from-store, or checkpoint folders; they must "
                        "share architecture, vocabulary, stage and data (the catalog comes from the last)")
    _shipping_arguments(p, what="the average", dtype_help="the mean itself is taken in float32")


def _average(args: argparse.Namespace) -> int:
    from dgr2.model_store.average import average_checkpoints

    if len(args.checkpoints) < 2:
        raise SystemExit("dgr2 model average: give at least two checkpoints")
    srcs = [resolve_checkpoint(ref, args.from_store) for ref in args.checkpoints]
    dest = _destination(args)
    path = average_checkpoints(srcs, dest["store"], dest["name"], dest["version"], dest["aliases"],
                               dtype=getattr(torch, args.dtype), evals=_evals(args))
    return _print({"path": str(path), "averaged": [str(s) for s in srcs], "aliases": args.alias})


# ----------------------------------------------------------------------------- graft
def _graft_arguments(p: argparse.ArgumentParser) -> None:
    for arg, what in (("base", "the model to carry the difference to"), ("tuned", "the fine-tuned model"),
                      ("tuned_parent", "the model TUNED was fine-tuned from")):
        p.add_argument(arg, metavar=arg.upper(), help=f"{what}: NAME[:VERSION_OR_ALIAS] in --from-store, or a folder")
    p.add_argument("--scale", type=float, default=1.0, help="multiple of the difference to add (default 1)")
    _shipping_arguments(p, what="the result", dtype_help="the sum itself is taken in float32")


def _graft(args: argparse.Namespace) -> int:
    from dgr2.model_store.graft import graft_checkpoints

    srcs = [resolve_checkpoint(ref, args.from_store) for ref in (args.base, args.tuned, args.tuned_parent)]
    dest = _destination(args)
    path = graft_checkpoints(*srcs, dest["store"], dest["name"], dest["version"], dest["aliases"], scale=args.scale,
                             dtype=getattr(torch, args.dtype), evals=_evals(args))
    return _print({"path": str(path), "base": str(srcs[0]), "tuned": str(srcs[1]), "tuned_parent": str(srcs[2]),
                   "scale": args.scale, "aliases": args.alias})


# ----------------------------------------------------------------------------- record-eval
def _record_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="NAME[:VERSION_OR_ALIAS] in the store, or a checkpoint folder")
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.add_argument("--eval", action="append", required=True, metavar="FILE",
                   help="a `dgr2 eval --json` output of this checkpoint (JSON object, or JSON lines) to add to "
                        "its manifest under metrics.eval (repeatable)")


def _record_eval(args: argparse.Namespace) -> int:
    from dgr2.model_store.checkpoint import record_evals

    path = resolve_checkpoint(args.checkpoint, args.store)
    return _print({"path": str(path), "added": record_evals(path, _evals(args))})


# ----------------------------------------------------------------------------- verify
def _verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="NAME[:VERSION_OR_ALIAS] in the store, or a checkpoint folder")
    p.add_argument("--store", default=None, help=STORE_HELP)


def _verify(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint, args.store))
    return _print({"path": str(ckpt.path), "stage": ckpt.manifest.get("stage"), "decoder": ckpt.config.decoder,
                   "parameters": sum(p.numel() for p in ckpt.model.parameters()), "ok": True})


LIST = Command(_list_arguments, _list)
SHIP = Command(_ship_arguments, _ship)
AVERAGE = Command(_average_arguments, _average)
GRAFT = Command(_graft_arguments, _graft)
RECORD_EVAL = Command(_record_eval_arguments, _record_eval)
VERIFY = Command(_verify_arguments, _verify)
