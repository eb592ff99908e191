"""The verifier proving a new checkpoint consistent with the one it remembers, from a log's
C2SP tiles: tiles computed here from the RFC 6962 stored hashes (independently of the node's
writer) and served by an in-memory fetcher; a fork is a split view, wrong tiles are named as
such, a missing partial tile falls back to the full one, unreachable tiles are a clear reason."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import pytest

from rebuilder.db import NewAttestation, Store
from rebuilder.tlog import LogSettings, NodeLog
from tests.unit.coordinator.factory import Signer, sha
from verifier.decision import BadResponse, Unreachable
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.policy import Policy
from verifier.sources import ClientConfig, FetcherInterface
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.consistency import check_prefix, read_prefix, split_stored_hash_index
from verifier.tlog.merkle import (
    leaf_hash,
    stored_hash_count,
    stored_hash_index,
    stored_hashes_for_leaf,
    tree_hash,
)
from verifier.tlog.note import Note, NoteSigner
from verifier.tlog.online import prove_consistency
from verifier.tlog.state import LogState, SplitView
from verifier.tlog.tiles import TILE_WIDTH, tile_path, tiles_for_size

URL = "http://rb.example/log"
ORIGIN = "rb-a.example/log"


def _hashes(entries: list[bytes]) -> list[bytes]:
    hashes: list[bytes] = []

    def read(ix: Sequence[int]) -> list[bytes]:
        return [hashes[j] for j in ix]

    for i, e in enumerate(entries):
        hashes.extend(stored_hashes_for_leaf(i, leaf_hash(e), read))
    return hashes


def _tiles(entries: list[bytes], sizes: list[int]) -> dict[str, bytes]:
    """Every tile (full and partial) of the trees of ``sizes`` leaves, by path."""
    hashes = _hashes(entries)
    out: dict[str, bytes] = {}
    for size in sizes:
        level = 0
        while TILE_WIDTH ** level <= size:
            for n in range(size // TILE_WIDTH ** (level + 1)):
                out[tile_path(level, n)] = b"".join(
                    hashes[stored_hash_index(8 * level, n * TILE_WIDTH + i)]
                    for i in range(TILE_WIDTH))
            level += 1
        for level, n, w in tiles_for_size(size):
            out[tile_path(level, n, w)] = b"".join(
                hashes[stored_hash_index(8 * level, n * TILE_WIDTH + i)] for i in range(w))
    return out


def _root(entries: list[bytes]) -> bytes:
    hashes = _hashes(entries)
    return tree_hash(len(entries), lambda ix: [hashes[j] for j in ix])


class Tiles(FetcherInterface):
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.asked: list[str] = []

    async def _fetch(self, url: str) -> AsyncGenerator[bytes, None]:
        self.asked.append(url)
        path = url.removeprefix(URL + "/")
        if path not in self.files:
            raise HTTPStatusError(url, 404)
        yield self.files[path]


class Down(FetcherInterface):
    async def _fetch(self, url: str) -> AsyncGenerator[bytes, None]:
        raise ConnectionRefusedError(111, "Connection refused")
        yield b""  # pragma: no cover - makes this an async generator


def test_split_stored_hash_index_inverts_stored_hash_index() -> None:
    for level in range(12):
        for n in range(300):
            assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)
    assert sorted(stored_hash_index(*split_stored_hash_index(i)) for i in range(
        stored_hash_count(1000))) == list(range(stored_hash_count(1000)))


@pytest.mark.parametrize(("old", "new"), [(1, 2), (3, 5), (4, 8), (7, 300), (256, 257),
                                          (255, 70000), (65536, 65537), (1000, 66000)])
async def test_growth_proved_from_tiles(old: int, new: int) -> None:
    entries = [f"entry {i}".encode() for i in range(new)]
    fetcher = Tiles(_tiles(entries, [old, new]))
    prefix = await read_prefix(fetcher, URL, old, new, ClientConfig())
    check_prefix(prefix, _root(entries[:old]), _root(entries), "rb.example/log")
    assert prefix.prefix_root == _root(entries[:old])


async def test_a_fork_is_a_split_view_naming_both_roots() -> None:
    shown_first = [f"entry {i}".encode() for i in range(5)]
    forked = [b"rewritten 0", *shown_first[1:], *(f"more {i}".encode() for i in range(4))]
    fetcher = Tiles(_tiles(forked, [9]))
    prefix = await read_prefix(fetcher, URL, 5, 9, ClientConfig())
    with pytest.raises(SplitView) as e:
        check_prefix(prefix, _root(shown_first), _root(forked), "rb.example/log")
    assert "not an extension of size 5" in e.value.reason
    assert base64.b64encode(_root(shown_first)).decode() in e.value.reason
    assert base64.b64encode(_root(forked[:5])).decode() in e.value.reason


async def test_tiles_that_do_not_match_the_checkpoint_are_not_a_split_view() -> None:
    entries = [f"entry {i}".encode() for i in range(9)]
    files = _tiles(entries, [9])
    tile = files[tile_path(0, 0, 9)]
    files[tile_path(0, 0, 9)] = tile[:32 * 6] + bytes(32) + tile[32 * 7:]
    prefix = await read_prefix(Tiles(files), URL, 5, 9, ClientConfig())
    with pytest.raises(BadDataError) as e:
        check_prefix(prefix, _root(entries[:5]), _root(entries), "rb.example/log")
    assert not isinstance(e.value, SplitView)
    assert "do not match its checkpoint of size 9" in e.value.reason


async def test_missing_partial_tile_falls_back_to_the_full_one() -> None:
    entries = [f"entry {i}".encode() for i in range(600)]
    files = _tiles(entries, [600])  # no partial tile of size 300's tree any more
    fetcher = Tiles(files)
    prefix = await read_prefix(fetcher, URL, 3, 300, ClientConfig())
    check_prefix(prefix, _root(entries[:3]), _root(entries[:300]), "o")
    assert f"{URL}/tile/0/001.p/44" in fetcher.asked and f"{URL}/tile/0/001" in fetcher.asked


async def test_short_tile_and_unreachable_log_are_clear_errors() -> None:
    entries = [f"entry {i}".encode() for i in range(9)]
    files = _tiles(entries, [9])
    files[tile_path(0, 0, 9)] = files[tile_path(0, 0, 9)][:-1]
    with pytest.raises(BadDataError, match=r"tile/0/000.p/9 .* is 287 bytes, expected 288"):
        await read_prefix(Tiles(files), URL, 5, 9, ClientConfig())
    with pytest.raises(UnreachableError, match="refused"):
        await read_prefix(Down(), URL, 5, 9, ClientConfig())
    with pytest.raises(HTTPStatusError):
        await read_prefix(Tiles({}), URL, 5, 9, ClientConfig())


def test_state_compare_and_remember() -> None:
    state = LogState({})
    cp5 = Checkpoint("o", 5, bytes(32))
    assert state.compare("k", cp5) is None
    state.remember("k", cp5, b"note\n")
    assert state.compare("k", cp5) is None
    old = state.compare("k", Checkpoint("o", 9, b"\x01" * 32))
    assert old is not None and (old.size, old.root) == (5, bytes(32))
    with pytest.raises(SplitView, match="two different roots for size 5"):
        state.compare("k", Checkpoint("o", 5, b"\x01" * 32))
    state.remember("k", Checkpoint("o", 3, bytes(32)), b"n\n")  # smaller: memory keeps 5
    assert state.logs["k"]["size"] == 5
    # Offline, a larger checkpoint counts (on its cosignatures) but is not remembered.
    state.observe("k", Checkpoint("o", 9, b"\x01" * 32), b"n\n")
    assert state.logs["k"]["size"] == 5


class Files(FetcherInterface):
    """Serves a node log directory (as written by ``rebuilder.tlog``) under ``URL``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def _fetch(self, url: str) -> AsyncGenerator[bytes, None]:
        path = self.root / url.removeprefix(URL + "/")
        if not path.is_file():
            raise HTTPStatusError(url, 404)
        yield path.read_bytes()


async def test_prove_consistency_against_a_real_node_log(tmp_path: Path) -> None:
    """The node's own tile writer and this reader agree; an unreachable log makes the
    rebuilder's evidence a BadResponse naming why, and memory stays where it was."""
    signer = Signer("rb-a")
    store = await Store.open(tmp_path / "state.db")
    node_log = await NodeLog.open(store, LogSettings(ORIGIN, URL, tmp_path / "log"),
                                  NoteSigner(ORIGIN, signer.key))
    envs = [signer.rebuild("x", "1", {"x": sha(f"x{i}")}, invocation=f"b{i}").to_bytes()
            for i in range(300)]

    async def add(chunk: list[bytes]) -> tuple[Checkpoint, Note]:
        await store.add_attestations_bulk([
            NewAttestation(hashlib.sha256(e).hexdigest(), e, "rebuild", "x", "1", "amd64",
                           (("x", sha("x")),)) for e in chunk])
        signed = await node_log.checkpoint()
        assert signed is not None
        note = Note.from_bytes(signed.note)
        return Checkpoint.from_text(note.text), note

    try:
        cp3, note3 = await add(envs[:3])
        cp300, note300 = await add(envs[3:])
    finally:
        await store.close()
    (tmp_path / "a.pub").write_text(signer.public_pem)
    policy = Policy.from_toml(
        f'threshold = 1\n[log]\nrequire_inclusion = true\n[[rebuilder]]\nid = "rb-a"\n'
        f'operator = "op"\nurl = "{URL.removesuffix("/log")}"\npublic_key_file = "a.pub"\n',
        tmp_path)
    keyid = policy.rebuilders[0].keyid
    for fetcher, ok in ((Down(), False), (Files(tmp_path / "log"), True)):
        state = LogState({})
        state.remember(keyid, cp3, note3.to_bytes())
        checked: dict[str, Sequence[bytes] | Unreachable | BadResponse] = {"rb-a": [envs[5]]}
        await prove_consistency(policy, checked, {"rb-a": [("d" * 64, cp300, note300)]}, state,
                                fetcher, ClientConfig())
        if ok:
            assert checked["rb-a"] == [envs[5]]
            assert state.logs[keyid]["size"] == 300
        else:
            bad = checked["rb-a"]
            assert isinstance(bad, BadResponse)
            assert "checkpoint 300 of rb-a.example/log cannot be proved consistent" in bad.error
            assert "log tiles unreachable" in bad.error and "refused" in bad.error
            assert state.logs[keyid]["size"] == 3
