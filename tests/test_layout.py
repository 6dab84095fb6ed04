"""Data flows one way, and so do imports (README, "How it fits together"): each folder imports only
the folders below it. Read from the source (every `import edgesearch.X` and `from edgesearch.X`,
lazy ones inside functions included), so a forbidden import fails here even if no test runs it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folder -> the edgesearch folders it may import (besides itself)
ALLOWED = {
    "common": set(),
    "spaces": {"common"},
    "reports": {"common"},
    "runners": {"common", "spaces"},
    "search": {"common", "spaces", "runners", "reports", "hardware_profiles"},
}


def imported_folders(path: Path) -> set[str]:
    """The edgesearch folders one file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "edgesearch" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_the_folders_below_it(folder):
    wrong = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        extra = imported_folders(path) - ALLOWED[folder] - {folder}
        if extra:
            wrong[str(path.relative_to(ROOT))] = sorted(extra)
    assert not wrong, wrong


def test_no_module_imports_one_that_imports_it_back():
    """No import circle between modules of the package (lazy imports included)."""
    modules = {}
    for folder in ALLOWED:
        for path in (ROOT / folder).rglob("*.py"):
            name = ".".join(("edgesearch", *path.relative_to(ROOT).with_suffix("").parts))
            modules[name.removesuffix(".__init__")] = path
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as error:
        raise AssertionError(f"import circle: {' -> '.join(error.args[1])}") from None
