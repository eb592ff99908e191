"""``rebuilder._stopsignals``: a stop signal is recorded from ``catch()`` on and reaches the
running loop, whether it came before the loop, on the loop's thread or on another thread.
Each case runs in a child interpreter: a broken handler kills that child, not pytest."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from rebuilder import _stopsignals


def _child(code: str) -> subprocess.CompletedProcess[str]:
    prelude = ("import asyncio, os, signal, threading, time\n"
               "from rebuilder import _stopsignals as s\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("argv", "caught"), [
    (["run", "--config", "c.toml"], True),
    (["-v", "run", "--config", "c.toml"], True),
    (["status", "--config", "run"], False),  # a later "run" is an argument, not the command
    (["rebuild", "--config", "c.toml"], False),  # SIGTERM ends a foreground rebuild
    ([], False),
])
def test_only_the_run_command_catches_stop_signals(argv: list[str], caught: bool) -> None:
    try:
        assert _stopsignals.catch_if_serving(argv) is caught
        assert (signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL) is caught
    finally:
        _stopsignals.release()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_caught_sigterm_is_recorded_not_fatal() -> None:
    r = _child("""
        assert not s.requested()
        assert s.catch() and not s.catch()  # the second call finds them installed
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        print("requested", s.requested())
    """)
    assert (r.returncode, r.stdout.strip()) == (0, "requested True"), r.stderr


@pytest.mark.parametrize("when", ["before the loop", "on the loop", "from another thread"])
def test_a_stop_signal_reaches_the_loop_whenever_it_comes(when: str) -> None:
    r = _child(f"""
        when = {when!r}
        s.catch()
        if when == "before the loop":
            os.kill(os.getpid(), signal.SIGTERM)

        async def main():
            stop = asyncio.Event()
            detach = s.attach(asyncio.get_running_loop(), stop.set)
            if when == "on the loop":
                os.kill(os.getpid(), signal.SIGTERM)
            elif when == "from another thread":
                # the main thread blocks SIGTERM (after starting the thread, which would
                # inherit the mask): the kernel delivers it to the other thread, and only the
                # wakeup fd tells the sleeping loop
                go = threading.Event()
                t = threading.Thread(
                    target=lambda: go.wait() and os.kill(os.getpid(), signal.SIGTERM))
                t.start()
                signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
                go.set()
                await asyncio.to_thread(t.join)
            await asyncio.wait_for(stop.wait(), 30)
            detach()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
            # detached: the handler stays and records; nothing reads the old socket
            os.kill(os.getpid(), signal.SIGTERM)
            print("stopped", signal.set_wakeup_fd(-1))

        asyncio.run(main())
    """)
    assert (r.returncode, r.stdout.strip()) == (0, "stopped -1"), r.stderr


def test_attach_installs_and_detach_removes_the_handlers_it_installed() -> None:
    r = _child("""
        async def main():
            stop = asyncio.Event()
            detach = s.attach(asyncio.get_running_loop(), stop.set)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 30)
            detach()
            print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)

        asyncio.run(main())
    """)
    assert (r.returncode, r.stdout.strip()) == (0, "True"), r.stderr


def test_after_ignore_until_exit_a_sigterm_changes_nothing() -> None:
    r = _child("""
        s.catch()
        s.ignore_until_exit()
        os.kill(os.getpid(), signal.SIGTERM)
        print("alive")
    """)
    assert (r.returncode, r.stdout.strip()) == (0, "alive"), r.stderr
