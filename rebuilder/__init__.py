"""repro-quorum's rebuilder node: watch a repository, rebuild, sign, store, publish.

The stages of a rebuild, one module each: ``ecosystem`` (how a repository is watched and how
one rebuild runs, per ecosystem; Debian's in ``debian/``: ``watch``, ``indexes`` and
``indexproc`` for Release/Packages/Sources -> jobs, ``build`` with ``buildinfo``, ``pins`` and
``environment``), ``queue`` (workers), ``fetch``, ``sandbox`` with ``_cgroup`` and
``_buildfs`` for its kernel limits, ``compare`` (the pipeline returns an
``outcome.RebuildOutcome``), ``limits`` (which of those this machine enforces), ``attest``
(statement and signature), ``db`` (state), ``publish`` (MQTT outbox), ``api`` (read-only HTTP),
``daemon`` (wires them), ``cli`` (the ``rebuilder`` command)::

    config = load_config(Path("/var/lib/repro-quorum/rebuilder/config.toml"))
    await run_daemon(config)                  # what `rebuilder run` does
    app = create_app(config)                  # the read-only HTTP API alone

The public names below are imported lazily, so ``import rebuilder`` stays cheap and the
pipeline's modules can import ``rebuilder.outcome`` without pulling in the daemon.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "rebuilder.config",
    "ConfigError": "rebuilder.config",
    "load_config": "rebuilder.config",
    "Store": "rebuilder.db",
    "create_app": "rebuilder.api",
    "run_daemon": "rebuilder.daemon",
    "BuildJob": "rebuilder.outcome",
    "RebuildOutcome": "rebuilder.outcome",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'rebuilder' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
