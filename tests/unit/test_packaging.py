"""What an operator installs: the service packages and rqdb, never the demo or the test fixtures.

The wheel's packages come from ``[tool.setuptools.packages.find]``; these tests apply its
``include`` patterns as setuptools does (fnmatch on dotted package names) to the packages of the
source tree, and check that no installed module imports ``rqdemo``.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _tree_packages() -> list[str]:
    return sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in ROOT.glob("**/__init__.py")
        if ".venv" not in init.parts and not any(p.startswith(".") for p in init.parts)
    )


def _installed() -> list[str]:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    return [p for p in _tree_packages()
            if any(fnmatch.fnmatchcase(p, pat) for pat in find["include"])]


def test_the_wheel_holds_the_services_and_not_the_demo() -> None:
    installed = _installed()
    assert {"verifier", "rebuilder", "coordinator", "rqdb"} <= set(installed)
    assert "rqdemo" in _tree_packages()  # the check below would pass for a missing package
    leaked = [p for p in installed if p.split(".")[0] in ("rqdemo", "tests", "benchmarks")
              or "testrepo" in p.split(".")]
    assert leaked == []


def test_no_installed_module_imports_the_demo() -> None:
    offenders = []
    for package in _installed():
        for path in (ROOT / package.replace(".", "/")).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                              if n.split(".")[0] == "rqdemo"]
    assert offenders == []
