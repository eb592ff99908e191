"""The daemon's index worker yields the CPU: ``lower_priority`` puts the process, and the
threads it starts afterwards (the decompression pool), at ``SCHED_IDLE``."""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.connection import Connection

from rebuilder.debian.indexproc import lower_priority


def _report(conn: Connection) -> None:
    said = lower_priority()
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    t.start()
    t.join()
    conn.send((said, os.sched_getscheduler(0), seen[0]))
    conn.close()


def test_the_worker_runs_at_idle_priority_threads_included() -> None:
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
    p = multiprocessing.get_context("fork").Process(target=_report, args=(send,))
    p.start()
    said, policy, thread_policy = receive.recv()
    p.join(10)
    assert p.exitcode == 0
    # an unprivileged process may always lower its own priority to SCHED_IDLE
    assert said == "SCHED_IDLE"
    assert policy == os.SCHED_IDLE
    assert thread_policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller is untouched
