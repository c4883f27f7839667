"""Every third-party module the relay imports comes from a dependency pyproject.toml
declares, not from one that merely happens to pull it in."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _imported_top_level_modules() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "relay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"relay"}


def _declared() -> set[str]:
    """Declared distributions; `psycopg[binary,pool]` declares psycopg-binary and
    psycopg-pool too (the extras of psycopg are those distributions)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    for spec in project["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", spec)
        assert match, spec
        name, extras = match.group(1), match.group(2)
        names.add(name)
        names.update(f"{name}-{extra.strip()}" for extra in (extras or "").split(",") if extra)
    return {n.lower().replace("_", "-") for n in names}


def test_every_module_the_relay_imports_is_a_declared_dependency() -> None:
    owners = packages_distributions()
    undeclared = {}
    for module in _imported_top_level_modules():
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        assert dists, f"{module} is imported by relay/ but installed by no distribution"
        if not dists & _declared():
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"
