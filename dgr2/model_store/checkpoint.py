"""The checkpoint format: a Hugging Face folder plus our catalog and a hash manifest.

  config.json         Qwen3 config + our fields (mask_token_id, block_size, threshold, decoder)
  model.safetensors   weights in Hugging Face naming (tied lm_head omitted, as transformers does)
  tokenizer.json      the ``tokenizers`` vocabulary
  catalog.jsonl.xz    item features the prompt renders (xz-compressed JSON lines; format 1
                      checkpoints hold a plain catalog.jsonl, still read)
  manifest.json       sha256 of every file above, parent, recipe stage, command, data hash, metrics

Loading verifies every hash and refuses a missing, truncated or tampered file with an error that
names it, before any weight is used.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dgr2.errors import UserError
from dgr2.model.catalog import Catalog
from dgr2.model.config import ModelConfig
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer

# The catalog's co-occurrence links are most of its size (~11 MB as plain text on Beauty, 1.5 MB in
# xz), and the shipped pair carries two catalogs inside a 25 MB budget: format 2 compresses it.
CATALOG = "catalog.jsonl.xz"
LEGACY_CATALOG = "catalog.jsonl"  # format 1
FILES = ("config.json", "model.safetensors", "tokenizer.json", CATALOG)
MANIFEST = "manifest.json"
FORMAT_VERSION = 2


def files_of(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The files a checkpoint of this manifest's format must hold (format 1: manifests without the key)."""
    return (*FILES[:-1], LEGACY_CATALOG) if manifest.get("format", 1) == 1 else FILES


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the offending file."""


@dataclass
class Checkpoint:
    model: Transformer
    vocab: Vocab
    catalog: Catalog
    manifest: dict[str, Any]
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.config


@dataclass
class Provenance:
    stage: str  # "init" | "ar" | "cft" | "opd" | "rl" | ...
    parent: str | None = None  # the checkpoint this one was trained from
    command: str = field(default_factory=lambda: shlex.join(sys.argv))
    data_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: Transformer, vocab: Vocab, catalog: Catalog,
                    provenance: Provenance, dtype: torch.dtype = torch.float32) -> Path:
    """Write a checkpoint folder (created if needed, files replaced) and its manifest."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    vocab.save(path / "tokenizer.json")
    catalog.save(path / CATALOG)
    (path / LEGACY_CATALOG).unlink(missing_ok=True)  # a format-1 checkpoint rewritten in place
    manifest = {
        "format": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stage": provenance.stage,
        "parent": provenance.parent,
        "command": provenance.command,
        "data_hash": provenance.data_hash,
        "metrics": provenance.metrics,
        "files": {name: sha256_file(path / name) for name in FILES},
        "sizes": {name: (path / name).stat().st_size for name in FILES},
    }
    write_manifest(path, manifest)
    return path


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """``path/manifest.json``, replaced whole (a reader never sees half of it)."""
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path / MANIFEST)


def record_evals(path: str | Path, evals: list[dict]) -> int:
    """Add ``dgr2 eval --json`` results of the checkpoint at ``path`` to its manifest's ``metrics.eval``
    (the weights and every hash stay as they are). A result naming another checkpoint is refused; one
    already recorded (same settings and metrics) is not added twice. Returns how many were added."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    for e in evals:
        if e.get("checkpoint") != path.name:
            raise CheckpointError(f"{path}: an evaluation of {e.get('checkpoint')!r} is not one of {path.name!r}")
    metrics = manifest.setdefault("metrics", {})
    recorded = metrics.get("eval", [])
    new = [e for e in evals if e not in recorded]
    metrics["eval"] = recorded + new
    write_manifest(path, manifest)
    return len(new)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check the manifest against the files; returns the manifest or raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path.name}")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{MANIFEST} is missing in checkpoint {path.name}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{MANIFEST} of checkpoint {path.name} is unreadable: {e}") from None
    fmt = manifest.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise CheckpointError(f"{MANIFEST} of checkpoint {path.name} has format {fmt!r}; "
                              f"this version reads formats 1..{FORMAT_VERSION}")
    for name in files_of(manifest):
        if name not in files:
            raise CheckpointError(f"{MANIFEST} of checkpoint {path.name} does not list {name}")
        if not (path / name).is_file():
            raise CheckpointError(f"{name} is missing in checkpoint {path.name}")
        expected_size = manifest.get("sizes", {}).get(name)
        size = (path / name).stat().st_size
        if expected_size is not None and size < expected_size:
            raise CheckpointError(f"{name} in checkpoint {path.name} is truncated ({size} of {expected_size} bytes)")
        if sha256_file(path / name) != files[name]:
            raise CheckpointError(f"{name} in checkpoint {path.name} does not match its sha256 in {MANIFEST} "
                                  "(truncated, corrupted or modified)")
    return manifest


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, verify: bool = True) -> Checkpoint:
    path = Path(path)
    manifest = verify_checkpoint(path) if verify else json.loads((path / MANIFEST).read_text())
    try:
        hf_config = json.loads((path / "config.json").read_text())
        config = ModelConfig.from_hf_dict(hf_config)
        if "trace_len" not in hf_config and manifest.get("metrics", {}).get("trace_len"):
            config = config.replace(trace_len=manifest["metrics"]["trace_len"])  # written before config had it
        vocab = Vocab.from_file(path / "tokenizer.json")
        catalog = Catalog.load(path / files_of(manifest)[-1])
        if len(vocab) != config.vocab_size:
            raise CheckpointError(f"tokenizer.json has {len(vocab)} tokens but config.json says {config.vocab_size}")
        model = Transformer(config)
        state = load_file(str(path / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise CheckpointError(f"model.safetensors does not fit config.json: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}")
    except CheckpointError:
        raise
    except Exception as e:  # a file that passed the hash check but cannot be parsed
        raise CheckpointError(f"checkpoint {path.name} cannot be loaded: {type(e).__name__}: {e}") from None
    model = model.to(device=device, dtype=dtype).eval()
    return Checkpoint(model, vocab, catalog, manifest, path)
