"""C2SP checkpoints (c2sp.org/tlog-checkpoint): the signed tree head of a log.

The note text is ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` and optional extension
lines; the log signs it as a signed note (``note.py``) and witnesses cosign it::

    cp = Checkpoint("rb.example/log", 3, root)
    note = sign_note(cp.to_text(), [log_signer])
    Checkpoint.from_text(Note.from_bytes(note).text) == cp
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from verifier.errors import BadDataError
from verifier.tlog.merkle import HASH_SIZE

__all__ = ["Checkpoint", "CheckpointError"]

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


class CheckpointError(BadDataError):
    def __init__(self, reason: str) -> None:
        super().__init__("checkpoint", reason)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or not self.origin.isprintable():
            raise CheckpointError(f"origin {self.origin!r} is empty or not one printable line")
        # The log key also signs DSSE envelopes; a DSSE PAE starts with "DSSEv1 ", so no
        # checkpoint text may (ARCHITECTURE §4.9, docs/formats.md "Transparency log").
        if self.origin.startswith("DSSEv1"):
            raise CheckpointError("origin must not start with 'DSSEv1'")
        if not 0 <= self.size < 1 << 63:
            raise CheckpointError(f"tree size {self.size} is out of range")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root hash is {len(self.root)} bytes, expected {HASH_SIZE}")
        for line in self.extensions:
            if not line or "\n" in line:
                raise CheckpointError("extension lines must be non-empty single lines")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(),
                 *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint text does not end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint has {len(lines)} lines, at least 3 expected")
        origin, size, root, *ext = lines
        if not _SIZE.fullmatch(size):
            raise CheckpointError(f"tree size line {size[:30]!r} is not a decimal without "
                                  "leading zeroes")
        try:
            raw = base64.b64decode(root, validate=True)
        except (binascii.Error, ValueError) as e:
            raise CheckpointError("root hash line is not base64") from e
        return cls(origin, int(size), raw, tuple(ext))
