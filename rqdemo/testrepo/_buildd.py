"""One package built the way a buildd builds it: unpacked, then ``dpkg-buildpackage`` in the
rebuilder's sandbox at a fixed Build-Path (shared by the test repository's binNMUs and the
real-packages test fixture)::

    buildd_build(top, "hello_2.10-3.dsc", "hello-2.10", log, build_parent="/build",
                 argv=["dpkg-buildpackage", "-B", "--no-sign", "-rfakeroot"])
    # top/ now holds the .debs, the .buildinfo and the .changes
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rebuilder import sandbox
from rqdemo.testrepo._repo import _run

__all__ = ["buildd_build", "chown_to_nobody"]


def chown_to_nobody(top: Path) -> None:
    """The tree to the sandbox's build user (when running as root), as a buildd's is its own."""
    if os.geteuid() != 0:
        return
    for dirpath, dirnames, filenames in os.walk(top):
        for n in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, n), sandbox.NOBODY, sandbox.NOBODY)
    os.chown(top, sandbox.NOBODY, sandbox.NOBODY)


def buildd_build(
    top: Path,
    dsc: str,
    leaf: str,
    log: Path,
    *,
    build_parent: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    root: Path = Path("/"),
    system_paths: tuple[str, ...] = sandbox.HOST_SYSTEM_PATHS,
    before_build: Callable[[Path], None] | None = None,
    timeout: float = 1800,
) -> None:
    """Unpack ``top/dsc`` as ``top/leaf``, let ``before_build`` change the unpacked tree (a
    binNMU's changelog entry), and build it in the sandbox with ``top`` at ``build_parent``
    (so the buildinfo records ``Build-Path: <build_parent>/<leaf>``), from ``root``'s system."""
    _run(["dpkg-source", "-x", dsc, leaf], top, log, env={**os.environ, "LC_ALL": "C.UTF-8"})
    if before_build is not None:
        before_build(top / leaf)
    chown_to_nobody(top)
    cfg = sandbox.SandboxConfig(
        binds=(sandbox.Bind(top, build_parent, writable=True),),
        chdir=f"{build_parent}/{leaf}",
        env=dict(env or {"LC_ALL": "C.UTF-8"}),
        root=root,
        system_paths=system_paths,
    )
    _run(sandbox.bwrap_argv(list(argv), cfg, sandbox.Limits(timeout=timeout)), top, log,
         env={"PATH": os.environ["PATH"]})
