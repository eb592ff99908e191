"""Access to the committed test vectors and to the generator that writes them."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from verifier.debian import read_deb_identity
from verifier.decision import Artifact, Evidence, Unreachable
from verifier.policy import Policy

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors"


def make_vectors() -> ModuleType:
    """Import scripts/make_vectors.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "scripts/make_vectors.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def case_names() -> list[str]:
    return sorted(p.stem for p in (VECTORS / "decisions").glob("*.json"))


def load_case(name: str) -> tuple[dict[str, Any], Artifact, Policy, Evidence, datetime]:
    c = json.loads((VECTORS / "decisions" / f"{name}.json").read_text())
    deb = VECTORS / c["artifact"]["deb"]
    artifact = Artifact(c["artifact"]["sha256"], read_deb_identity(deb))
    policy = Policy.load(VECTORS / c["policy"])
    evidence: dict[str, Any] = {}
    for rid, items in c["evidence"].items():
        if isinstance(items, dict):
            evidence[rid] = Unreachable(items["unreachable"])
        else:
            evidence[rid] = [(VECTORS / p).read_bytes() for p in items]
    return c, artifact, policy, evidence, datetime.fromisoformat(c["now"])
