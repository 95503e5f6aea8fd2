"""The store: ``<root>/<name>/<version>/`` checkpoint folders plus ``<root>/<name>/aliases.json``.

Names, versions and aliases are plain identifiers (letters, digits, ``._-``, no leading dot), so
nothing a request or a config supplies can reach outside the root.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from dgr2.model_store.checkpoint import MANIFEST, CheckpointError

DEFAULT_ROOT = Path(__file__).resolve().parent  # the shipped checkpoints live beside this package's code
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIASES = "aliases.json"


def check_ident(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value) or ".." in value:
        raise CheckpointError(f"invalid {kind} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


class ModelStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _inside(self, path: Path) -> Path:
        real = path.resolve()
        if real != self.root and self.root not in real.parents:
            raise CheckpointError("path escapes the model store")
        return real

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # the shipped store is also a Python package: only folders holding models are model names
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and ((p / ALIASES).is_file() or any((v / MANIFEST).is_file() for v in p.iterdir())))

    def versions(self, name: str) -> list[str]:
        d = self._inside(self.root / check_ident("model name", name))
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if (p / MANIFEST).is_file())

    def aliases(self, name: str) -> dict[str, str]:
        f = self._inside(self.root / check_ident("model name", name) / ALIASES)
        if not f.is_file():
            return {}
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{ALIASES} of model {name} is unreadable: {e}") from None
        return {str(k): str(v) for k, v in data.items()}

    def set_alias(self, name: str, alias: str, version: str) -> None:
        check_ident("alias", alias)
        if version not in self.versions(name):
            raise CheckpointError(f"model {name} has no version {version!r}")
        aliases = self.aliases(name)
        aliases[alias] = version
        f = self.root / name / ALIASES
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(aliases, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, f)  # atomic: a reader never sees half a file

    def version_dir(self, name: str, version: str) -> Path:
        """Folder for a (possibly new) version."""
        return self._inside(self.root / check_ident("model name", name) / check_ident("version", version))

    def resolve(self, name: str, ref: str) -> Path:
        """Checkpoint folder of ``name`` at ``ref``, an alias or a version."""
        check_ident("model name", name)
        check_ident("version or alias", ref)
        version = self.aliases(name).get(ref, ref)
        path = self.version_dir(name, version)
        if not (path / MANIFEST).is_file():
            raise CheckpointError(f"model {name} has no version or alias {ref!r}")
        return path


def open_store(root: str | Path | None = None) -> ModelStore:
    """The store a command works on: ``root`` if given, else ``$DGR2_STORE``, else the shipped store."""
    return ModelStore(root or os.environ.get("DGR2_STORE") or DEFAULT_ROOT)


def resolve_checkpoint(ref: str | Path, store_root: str | Path | None = None) -> Path:
    """A checkpoint reference as users write it: ``NAME[:VERSION_OR_ALIAS]`` in the store (the alias
    defaults to ``ar``), or the path of a checkpoint folder."""
    if Path(ref).is_dir():
        return Path(ref)
    name, _, version = str(ref).partition(":")
    return open_store(store_root).resolve(name, version or "ar")
