"""Ask witnesses to cosign the node's checkpoints (C2SP tlog-witness ``add-checkpoint``).

Each witness is told the size it last cosigned (learnt from its 409 answer when unknown), gets
a consistency proof from that size, and answers with cosignature/v1 lines; those verified
against the configured witness key are kept with the checkpoint. A witness that is down only
delays its cosignature: the next round submits the latest checkpoint again::

    witnesses = [WitnessClient(w, session) for w in config.log.witnesses]
    await cosign_round(node_log, witnesses)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence

import aiohttp

from rebuilder.config import WitnessConfig
from rebuilder.tlog import NodeLog, SignedCheckpoint
from verifier.errors import BadDataError, UnreachableError
from verifier.tlog.note import Note, NoteError, NoteVerifier, Signature

__all__ = ["WitnessClient", "cosign_round", "run_log"]

log = logging.getLogger("rebuilder.cosign")

SUBMIT_TIMEOUT_S = 15.0
MAX_ANSWER_BYTES = 16 * 1024
_SIZE_LINE = re.compile(r"(0|[1-9][0-9]{0,18})\n")


class WitnessClient:
    def __init__(self, config: WitnessConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.verifier = NoteVerifier.from_vkey(config.key)
        self.known_size = 0  # the size the witness last cosigned for us, as far as we know

    @property
    def url(self) -> str:
        return self.config.url.rstrip("/") + "/add-checkpoint"

    async def _post(self, body: bytes) -> tuple[int, str, bytes]:
        try:
            async with asyncio.timeout(SUBMIT_TIMEOUT_S), self.session.post(
                    self.url, data=body, headers={"Content-Type": "text/plain"}) as resp:
                data = await resp.content.read(MAX_ANSWER_BYTES + 1)
                return resp.status, resp.content_type, data
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise UnreachableError(self.url, f"cannot submit checkpoint: {e!r}") from e

    async def submit(self, node_log: NodeLog, signed: SignedCheckpoint) -> list[Signature]:
        """The witness's verified cosignatures of ``signed``; raises ``BadDataError`` or
        ``UnreachableError``."""
        size = signed.checkpoint.size
        tried: set[int] = set()
        while True:
            old = self.known_size
            if old > size:
                raise BadDataError("witness", f"{self.config.name} has cosigned size {old} of "
                                   f"our log, larger than our checkpoint {size}")
            tried.add(old)
            proof = await node_log.consistency_proof(old, size) if old else []
            body = (f"old {old}\n".encode()
                    + b"".join(base64.b64encode(h) + b"\n" for h in proof)
                    + b"\n" + signed.note)
            status, ctype, data = await self._post(body)
            if len(data) > MAX_ANSWER_BYTES:
                raise BadDataError("witness", f"{self.config.name} answered over "
                                   f"{MAX_ANSWER_BYTES} bytes")
            if status == 409 and ctype == "text/x.tlog.size":
                m = _SIZE_LINE.fullmatch(data.decode("ascii", "replace"))
                if not m:
                    raise BadDataError("witness", f"{self.config.name}'s 409 body is not a size")
                self.known_size = int(m.group(1))
                if self.known_size in tried:
                    raise BadDataError("witness", f"{self.config.name} holds another root for "
                                       f"size {self.known_size} of our log (a fork?)")
                continue
            if status != 200:
                text = data[:200].decode("utf-8", "replace")
                raise BadDataError("witness", f"{self.config.name} answered HTTP {status}: "
                                   f"{text}")
            sigs = self._verify(signed, data)
            self.known_size = size
            return sigs

    def _verify(self, signed: SignedCheckpoint, data: bytes) -> list[Signature]:
        try:
            lines = data.decode("utf-8").split("\n")
            if lines[-1] != "":
                raise NoteError("answer does not end in a newline")
            sigs = [Signature.from_line(line) for line in lines[:-1]]
        except (UnicodeDecodeError, NoteError) as e:
            raise BadDataError("witness", f"{self.config.name} answered no signature lines: "
                               f"{e}") from e
        note = Note.from_bytes(signed.note)
        ours = [s for s in sigs if (s.name, s.key_id) == (self.verifier.name,
                                                          self.verifier.key_id)]
        for s in ours:
            if not self.verifier.verify(note.text.encode(), s.sig):
                raise BadDataError("witness", f"cosignature of {self.config.name} does not "
                                   "verify under its configured key")
        if not ours:
            raise BadDataError("witness", f"{self.config.name} answered no cosignature by its "
                               "configured key")
        return ours


async def cosign_round(node_log: NodeLog, witnesses: Sequence[WitnessClient]) -> int:
    """Submit the latest checkpoint to every witness that has not cosigned it; how many
    cosignatures were added."""
    signed = node_log.latest
    if signed is None:
        return 0
    have = {(s.name, s.key_id) for s in signed.cosignatures}
    added = 0
    for w in witnesses:
        if (w.verifier.name, w.verifier.key_id) in have:
            continue
        try:
            sigs = await w.submit(node_log, signed)
        except (BadDataError, UnreachableError) as e:
            log.warning("witness %s did not cosign checkpoint %d: %s", w.config.name,
                        signed.checkpoint.size, e)
            continue
        await node_log.add_cosignatures(signed.checkpoint.size, sigs)
        added += len(sigs)
    return added


async def run_log(node_log: NodeLog, witnesses: Sequence[WitnessClient], interval: float,
                  on_checkpoint: Callable[[SignedCheckpoint], None] | None = None) -> None:
    """Until cancelled: every ``interval`` seconds, checkpoint the entries that arrived, have
    it cosigned, and hand each new or newly cosigned checkpoint to ``on_checkpoint``."""
    last: bytes | None = None
    while True:
        try:
            await node_log.checkpoint()
            await cosign_round(node_log, witnesses)
            signed = node_log.latest
            if signed is not None and on_checkpoint is not None and signed.served() != last:
                last = signed.served()
                on_checkpoint(signed)
        except sqlite3.Error as e:  # the disk is full, say: the entries wait in the database
            log.warning("could not checkpoint the log: %s; retrying", e)
        await asyncio.sleep(interval)
