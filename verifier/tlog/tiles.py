"""C2SP tlog-tiles paths, tile contents and entry bundles (c2sp.org/tlog-tiles). Pure.

Tiles are 256 hashes wide (height 8). The level-``L`` tile ``N`` holds the tree hashes of level
``8L`` numbered ``N*256 ..``; a partial tile (width < 256) is named ``<N>.p/<W>``::

    tile_path(0, 1234067)       # 'tile/0/x001/x234/067'
    tile_path(1, 3, width=17)   # 'tile/1/003.p/17'
    tiles_for_size(70000)       # [(0, 273, 112), (1, 1, 17), (2, 0, 1)] partial tiles
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from verifier.errors import BadDataError

__all__ = [
    "MAX_ENTRY_BYTES",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "decode_bundle",
    "encode_bundle",
    "entries_path",
    "parse_tile_path",
    "tile_path",
    "tiles_for_size",
]

TILE_HEIGHT = 8
TILE_WIDTH = 256
MAX_ENTRY_BYTES = 0xFFFF  # big-endian uint16 length prefix in entry bundles
_ELEM = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")
_LEVEL = re.compile(r"0|[1-9][0-9]?")


def _index_path(n: int) -> str:
    digits = f"{n:d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    return "/".join([*("x" + g for g in groups[:-1]), groups[-1]])


def tile_path(level: int, n: int, width: int = TILE_WIDTH) -> str:
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{_index_path(n)}{suffix}"


def entries_path(n: int, width: int = TILE_WIDTH) -> str:
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/entries/{_index_path(n)}{suffix}"


def parse_tile_path(path: str) -> tuple[int | None, int, int]:
    """(level or None for entries, index, width) of a path below the prefix; ``BadDataError``
    for anything that is not exactly a tile or bundle name."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise BadDataError("tile path", f"{path[:80]!r} is not tile/<L>/<N>[.p/<W>]")
    level: int | None
    if parts[1] == "entries":
        level = None
    elif _LEVEL.fullmatch(parts[1]) and int(parts[1]) <= 63:
        level = int(parts[1])
    else:
        raise BadDataError("tile path", f"level {parts[1][:10]!r} is not 0..63")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not _WIDTH.fullmatch(rest[-1]) or int(rest[-1]) >= TILE_WIDTH:
            raise BadDataError("tile path", f"partial width {rest[-1][:10]!r} is not 1..255")
        width = int(rest[-1])
        rest = [*rest[:-2], rest[-2][:-2]]
    if not rest or len(rest) > 7 or not _LAST.fullmatch(rest[-1]) or not all(
            _ELEM.fullmatch(e) for e in rest[:-1]):
        raise BadDataError("tile path", f"index in {path[:80]!r} is not x001/x234/067 form")
    n = int("".join(e.lstrip("x") for e in rest))
    if len(rest) > 1 and rest[0] == "x000":
        raise BadDataError("tile path", f"index in {path[:80]!r} has a leading x000")
    return level, n, width


def tiles_for_size(size: int) -> list[tuple[int, int, int]]:
    """The partial tiles (level, index, width) a tree of ``size`` leaves has; the full ones
    are every (level, i) for i below each index."""
    out = []
    level = 0
    while True:
        span = TILE_WIDTH ** level
        if size < span:
            break
        width = (size // span) % TILE_WIDTH
        n = size // (span * TILE_WIDTH)
        if width:
            out.append((level, n, width))
        level += 1
    return out


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for e in entries:
        if len(e) > MAX_ENTRY_BYTES:
            raise ValueError(f"log entry of {len(e)} bytes exceeds {MAX_ENTRY_BYTES}")
        out += len(e).to_bytes(2, "big") + e
    return bytes(out)


def decode_bundle(data: bytes, count: int) -> list[bytes]:
    """Exactly ``count`` entries of a bundle; ``BadDataError`` for anything else."""
    out = list(_iter_bundle(data))
    if len(out) != count:
        raise BadDataError("entry bundle", f"has {len(out)} entries, expected {count}")
    return out


def _iter_bundle(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise BadDataError("entry bundle", "truncated length prefix")
        n = int.from_bytes(data[pos:pos + 2], "big")
        if pos + 2 + n > len(data):
            raise BadDataError("entry bundle", f"entry at byte {pos} is truncated")
        yield data[pos + 2:pos + 2 + n]
        pos += 2 + n
