"""Consistency between a checkpoint the verifier remembers and another of the same log, proved
from the log's own C2SP tiles (ARCHITECTURE §4.9, docs/formats.md "Verifier log state").

``read_prefix`` fetches, through the fetcher seam, the tiles of the larger tree that the
RFC 6962 consistency proof needs plus those giving the larger tree's own hash of its first
``old`` leaves; ``check_prefix`` then tells a fork from bad tiles: the proof must lead from that
prefix hash to the larger checkpoint's root (else the tiles do not match the checkpoint), and
the prefix hash must equal the smaller checkpoint's root (else the two checkpoints are a split
view)::

    prefix = await read_prefix(fetcher, "https://rb.example/log", old, new, config)
    check_prefix(prefix, old_root, new_root, origin)   # SplitView or BadDataError
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from verifier.errors import BadDataError, HTTPStatusError
from verifier.sources import ClientConfig, FetcherInterface
from verifier.tlog.merkle import (
    HASH_SIZE,
    ProofError,
    consistency_proof,
    node_hash,
    stored_hash_index,
    tree_hash,
    verify_consistency,
)
from verifier.tlog.state import SplitView
from verifier.tlog.tiles import TILE_HEIGHT, TILE_WIDTH, tile_path

__all__ = ["Prefix", "check_prefix", "read_prefix", "split_stored_hash_index"]

MAX_TILES = 256  # a consistency proof of any tree needs far fewer (about 2 per tile level)


@dataclass(frozen=True)
class Prefix:
    """What a log's tiles say about the tree of ``new`` leaves: the consistency proof from
    ``old`` and the hash of its first ``old`` leaves."""

    old: int
    new: int
    proof: tuple[bytes, ...]
    prefix_root: bytes


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """(level, n) of the stored hash at ``index`` (the inverse of ``stored_hash_index``; Go's
    ``tlog.SplitStoredHashIndex``)."""
    if index < 0:
        raise ValueError(f"stored hash index {index} is negative")
    n = index // 2
    at = stored_hash_index(0, n)
    while True:  # leaf n+1's hashes start after leaf n's 1 + trailing ones of n
        nxt = at + 1 + ((n + 1) & -(n + 1)).bit_length() - 1
        if nxt > index:
            break
        n += 1
        at = nxt
    level = index - at
    return level, n >> level


def _tile_of(level: int, n: int, size: int) -> tuple[int, int, int, int, int]:
    """(tile level, tile index, width for a tree of ``size``, first hash, hash count) of the
    tile hashes whose subtree is the stored hash (level, n)."""
    tl = level // TILE_HEIGHT
    below = level - tl * TILE_HEIGHT
    start = n << below
    t = start // TILE_WIDTH
    width = min(TILE_WIDTH, (size >> (tl * TILE_HEIGHT)) - t * TILE_WIDTH)
    return tl, t, width, start - t * TILE_WIDTH, 1 << below


def _fold_complete(hashes: Sequence[bytes]) -> bytes:
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _asked(old: int, new: int) -> list[int]:
    asked: list[int] = []

    def record(ix: Sequence[int]) -> list[bytes]:
        asked.extend(ix)
        return [bytes(HASH_SIZE)] * len(ix)

    consistency_proof(old, new, record)
    tree_hash(old, record)
    return asked


async def read_prefix(fetcher: FetcherInterface, prefix_url: str, old: int, new: int,
                      config: ClientConfig) -> Prefix:
    """The tiles of ``prefix_url`` (``<url>/log``) for the tree of ``new`` leaves, as a
    ``Prefix``; ``UnreachableError`` when a tile cannot be fetched, ``BadDataError`` when one
    has the wrong length. Falls back from a partial tile to the full one (c2sp.org/tlog-tiles)."""
    if not 0 < old < new:
        raise ValueError(f"no consistency to prove from size {old} to {new}")
    asked = _asked(old, new)
    spots = {i: _tile_of(*split_stored_hash_index(i), new) for i in asked}
    wanted = sorted({(tl, t, w) for tl, t, w, _, _ in spots.values()})
    if len(wanted) > MAX_TILES:
        raise BadDataError("log tiles", f"{len(wanted)} tiles needed, at most {MAX_TILES}")
    base = prefix_url.rstrip("/")

    async def get(tl: int, t: int, w: int) -> bytes:
        try:
            data = await fetcher.fetch(f"{base}/{tile_path(tl, t, w)}",
                                       max_bytes=TILE_WIDTH * HASH_SIZE,
                                       timeout=config.timeout)
        except HTTPStatusError as e:
            if e.status != 404 or w == TILE_WIDTH:
                raise
            data = await fetcher.fetch(f"{base}/{tile_path(tl, t)}",
                                       max_bytes=TILE_WIDTH * HASH_SIZE,
                                       timeout=config.timeout)
            if len(data) == TILE_WIDTH * HASH_SIZE:
                data = data[:w * HASH_SIZE]
        if len(data) != w * HASH_SIZE:
            raise BadDataError("log tiles", f"tile {tile_path(tl, t, w)} of {base} is "
                               f"{len(data)} bytes, expected {w * HASH_SIZE}")
        return data

    fetched = await asyncio.gather(*(get(*k) for k in wanted))
    tiles = dict(zip(wanted, fetched, strict=True))

    def read(ix: Sequence[int]) -> list[bytes]:
        out = []
        for i in ix:
            tl, t, w, first, count = spots[i]
            data = tiles[(tl, t, w)]
            out.append(_fold_complete([data[(first + j) * HASH_SIZE:(first + j + 1) * HASH_SIZE]
                                       for j in range(count)]))
        return out

    return Prefix(old, new, tuple(consistency_proof(old, new, read)), tree_hash(old, read))


def check_prefix(prefix: Prefix, old_root: bytes, new_root: bytes, origin: str) -> None:
    """``BadDataError`` when the tiles do not match the checkpoint of size ``prefix.new``;
    ``SplitView`` when they do but the tree of ``prefix.old`` leaves they contain is not the
    one whose root is ``old_root``."""
    try:
        verify_consistency(prefix.old, prefix.new, prefix.prefix_root, new_root, prefix.proof)
    except ProofError as e:
        raise BadDataError("log tiles", f"the tiles of {origin} do not match its checkpoint "
                           f"of size {prefix.new}: {e.reason}") from e
    if not hmac.compare_digest(prefix.prefix_root, old_root):
        raise SplitView(
            f"checkpoint of size {prefix.new} of {origin} is not an extension of size "
            f"{prefix.old}: its first {prefix.old} entries hash to "
            f"{base64.b64encode(prefix.prefix_root).decode()}, the checkpoint of size "
            f"{prefix.old} has root {base64.b64encode(old_root).decode()}")
