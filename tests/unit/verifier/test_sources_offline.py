"""Reading attestation files: which files count, how lines split, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.verifier._vectors import VECTORS
from verifier.errors import ConfigError
from verifier.sources import load_attestations

A = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes().strip()
B = (VECTORS / "attestations/agree-rb-beta.json").read_bytes().strip()


def test_jsonl_lines_json_files_nested_dirs_and_single_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "pool.intoto.jsonl").write_bytes(A + b"\n\n  \n" + B + b"\r\n")
    (tmp_path / "a" / "b" / "one.json").write_bytes(A)
    (tmp_path / "a" / "notes.txt").write_bytes(b"ignored")
    (tmp_path / "a" / "other.jsonl").write_bytes(B)  # not *.intoto.jsonl: ignored
    pool = load_attestations([tmp_path / "a"])
    assert pool == [A, A, B]  # files in sorted path order: b/one.json, then pool.intoto.jsonl
    assert load_attestations([tmp_path / "a" / "b" / "one.json"]) == [A]


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_attestations([tmp_path / "nope"])
