"""Verification worker processes that never outlive the coordinator.

A worker of ``Ingest``'s process pool watches its parent: when the coordinator dies (``kill -9``,
OOM killer), the worker is re-parented and exits within a second, instead of running on,
orphaned, until the next reboot. Started as the pool's initializer::

    ProcessPoolExecutor(n, initializer=init_watched_worker, initargs=(os.getpid(), pems, cap))
"""

from __future__ import annotations

import os
import threading
import time

from coordinator.checks import init_worker

__all__ = ["init_watched_worker"]

_POLL_S = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_S)
    os._exit(0)  # the parent is gone: nothing in this process is worth finishing


def init_watched_worker(parent: int, pems: dict[str, str], max_bytes: int) -> None:
    if os.getppid() != parent:  # the coordinator died before this worker started
        os._exit(0)
    threading.Thread(target=_watch, args=(parent,), name="parent watch", daemon=True).start()
    init_worker(pems, max_bytes)
