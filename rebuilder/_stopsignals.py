"""SIGTERM and SIGINT as a request to stop, never a death by signal, from a service's first
lines to its exit (``rebuilder run`` and ``coordinator run``).

asyncio's own handlers exist only once the imports, the configuration and the event loop do:
up to two seconds after start on a loaded machine; ``asyncio.run`` puts the default action back
when the loop closes. A SIGTERM before (systemd or a test stopping a node it restarted a moment
ago) or after (a second SIGTERM during the shutdown) killed the process with status -15. The
entry points call ``catch_if_serving()`` before importing anything heavy; from then on a stop
signal is recorded, and ``attach()`` passes it to the running loop, at once if it came early::

    catch_if_serving(sys.argv[1:])       # rebuilder/__main__.py, before the CLI's imports
    detach = attach(loop, stop.set)      # once the loop runs
    ...
    detach()                             # the rest of the shutdown still absorbs stop signals
    ignore_until_exit()                  # and so does the interpreter's finalization

This module imports nothing heavy: it runs before the CLI's imports.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "STOP_SIGNALS",
    "attach",
    "catch",
    "catch_if_serving",
    "ignore_until_exit",
    "release",
    "requested",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []
_previous: dict[int, Any] = {}


def _record(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


def catch() -> bool:
    """From now on SIGTERM and SIGINT are recorded, not fatal (main thread only). True if this
    call installed the handlers, False if they were installed already."""
    if _previous:
        return False
    for sig in STOP_SIGNALS:
        _previous[sig] = signal.signal(sig, _record)
    return True


def catch_if_serving(argv: Sequence[str]) -> bool:
    """``catch()`` when the command (the first argument not an option) is ``run``: a service.
    Other commands keep the default actions, so that SIGTERM ends a foreground rebuild."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return catch() if command == "run" else False


def ignore_until_exit() -> None:
    """The command is done and the process exits: stop signals are ignored from now on. The
    interpreter's finalization puts the default action back for a signal with a Python handler
    (CPython's ``_PySignal_Fini``), not for an ignored one, and it can take a while under load."""
    if _previous:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def requested() -> bool:
    """Whether a stop signal came since ``catch()``."""
    return bool(_received)


def release() -> None:
    """Put back the handlers ``catch()`` found (for a caller that runs a service in-process)."""
    for sig, handler in _previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    _previous.clear()
    _received.clear()


def attach(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback`` on ``loop`` for each stop signal, and soon if one came before. Returns
    the function that undoes this; the recording handlers stay (unless this call installed
    them), so that a signal during the rest of the shutdown is absorbed too."""
    installed = catch()
    receive, send = socket.socketpair()
    receive.setblocking(False)
    send.setblocking(False)
    # The C-level handler writes the signal's number there whichever thread the kernel chose,
    # and so wakes the loop (a Python handler runs only when the main thread runs bytecode).
    old_fd = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)

    def woken() -> None:
        try:
            data = receive.recv(512)
        except (BlockingIOError, InterruptedError):
            return
        if any(number in STOP_SIGNALS for number in data):
            callback()

    def came_early() -> None:
        # A signal before set_wakeup_fd wrote no byte, but its Python handler has run by now:
        # CPython runs pending handlers at the next function call.
        if _received:
            callback()

    loop.add_reader(receive.fileno(), woken)
    loop.call_soon(came_early)

    def detach() -> None:
        loop.remove_reader(receive.fileno())
        signal.set_wakeup_fd(old_fd)
        receive.close()
        send.close()
        if installed:
            release()

    return detach
