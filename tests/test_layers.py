"""Imports go one way: kernels <- model <- model_store <- recipe, service <- bench <- cli. A lower
package never imports a higher one, recipe and service never import each other, and the shared
leaves (errors, flags, records, plotting) import nothing of the project. Lazy imports inside
functions count too: they are still a dependency, only a later one."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dgr2"
LEVEL = {"kernels": 0, "model": 1, "model_store": 2, "recipe": 3, "service": 3, "bench": 4, "cli": 5, "__main__": 6}
LEAVES = {"errors", "flags", "records", "plotting"}


def _unit(path: Path, root: Path) -> str:
    """The top-level package or module of ``dgr2`` a file belongs to."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def _imported_units(tree: ast.AST) -> set[str]:
    units = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]  # `from dgr2 import records` names records
        units |= {n.split(".")[1] for n in names if n.startswith("dgr2.")}
    return units


def violations(root: Path) -> list[str]:
    """'FILE: A imports B' for each import against the order of the layers."""
    found = []
    for path in sorted(root.rglob("*.py")):
        src = _unit(path, root)
        for dst in sorted(_imported_units(ast.parse(path.read_text(), str(path))) - {src}):
            if src in LEAVES:
                allowed = False
            elif dst in LEAVES:
                allowed = True
            else:
                allowed = src in LEVEL and dst in LEVEL and LEVEL[dst] < LEVEL[src]
            if not allowed:
                found.append(f"{path.relative_to(root.parent)}: {src} imports {dst}")
    return found


def test_every_unit_has_a_layer():
    units = {_unit(p, PACKAGE) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(LEVEL) | LEAVES, f"give {sorted(units - set(LEVEL) - LEAVES)} a layer here"


def test_imports_go_one_way():
    assert violations(PACKAGE) == []


def test_an_import_against_the_layers_is_reported(tmp_path):
    """The check itself: an upward import, a sideways one, a lazy one and a leaf's are each named."""
    root = tmp_path / "dgr2"
    files = {
        "kernels/ops.py": "from dgr2.model.config import ModelConfig\n",
        "recipe/train.py": "import dgr2.service.app\nfrom dgr2.model import engine\n",
        "model/engine.py": "def f():\n    from dgr2.model_store import load_checkpoint\n",
        "errors.py": "from dgr2 import records\n",
        "service/app.py": "from dgr2.errors import UserError\nfrom . import routes\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert violations(root) == [
        "dgr2/errors.py: errors imports records",
        "dgr2/kernels/ops.py: kernels imports model",
        "dgr2/model/engine.py: model imports model_store",
        "dgr2/recipe/train.py: recipe imports service",
    ]
