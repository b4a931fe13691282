"""The layout's rules, checked on the source itself: the science never imports Dagster, the
cluster layer never reaches up into the worker's tasks, and a long module says why it is long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LONG = 420
"""Lines past which a module must say at its top why it is one module ("on purpose")."""


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("interp_assets/core", ("dagster", "dagster_pipes", "interp_assets.config", "resources")),
    ("resources", ("interp_assets.worker", "interp_assets.tasks", "interp_assets.assets")),
    ("interp_assets/tasks", ("dagster", "interp_assets.assets")),
])
def test_no_import_crosses_a_layer_it_must_not(folder: str, forbidden: tuple[str, ...]) -> None:
    crossing = {
        str(path.relative_to(ROOT)): sorted(name for name in _imports(path)
                                            if any(name == f or name.startswith(f + ".") for f in forbidden))
        for path in _modules(folder)
    }
    assert not {path: names for path, names in crossing.items() if names}


def test_a_long_module_says_why_at_its_top() -> None:
    unexplained = []
    for folder in ("interp_assets", "resources"):
        for path in _modules(folder):
            text = path.read_text()
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if text.count("\n") > LONG and "on purpose" not in docstring:
                unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not unexplained
