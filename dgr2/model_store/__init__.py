"""Checkpoints: the on-disk format (save, load, verify) and the registry of names, versions and aliases.

The shipped default checkpoints live in this package's folder (``DEFAULT_ROOT``)."""

from dgr2.model_store.checkpoint import (
    Checkpoint,
    CheckpointError,
    Provenance,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from dgr2.model_store.registry import DEFAULT_ROOT, ModelStore, open_store, resolve_checkpoint

DEFAULT_MODEL = "beauty-gr2"

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_ROOT", "Checkpoint", "CheckpointError", "ModelStore", "Provenance",
    "load_checkpoint", "open_store", "resolve_checkpoint", "save_checkpoint", "verify_checkpoint",
]
