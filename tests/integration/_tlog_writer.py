"""Run as a process by test_tlog_crash.py: append envelopes to a node store and checkpoint the
log as fast as it can, printing what is committed, until killed."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

from rebuilder.db import NewAttestation, Store
from rebuilder.tlog import LogSettings, NodeLog
from verifier.keys import load_private_key
from verifier.tlog.note import NoteSigner

ORIGIN = "crash.example/log"


async def main(directory: Path, count: int) -> None:
    store = await Store.open(directory / "state.db")
    node_log = await NodeLog.open(
        store, LogSettings(ORIGIN, "http://crash.example/log", directory / "log"),
        NoteSigner(ORIGIN, load_private_key(directory / "key.pem")))
    print("ready", flush=True)
    start = await node_log.size()
    for i in range(start, start + count):
        env = b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 50))
        await store.add_attestation(NewAttestation(
            hashlib.sha256(env).hexdigest(), env, "revocation", None, None, None, ()))
        print("stored", hashlib.sha256(env).hexdigest(), flush=True)  # committed: servable
        if i % 7 == 0:
            signed = await node_log.checkpoint()
            assert signed is not None
            print("checkpoint", signed.checkpoint.size, flush=True)
    await node_log.checkpoint()
    await store.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
