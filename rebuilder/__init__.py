"""repro-quorum's rebuilder node: watch a repository, rebuild, sign, store, publish.

The stages of a rebuild, one module each: ``watch`` (Release/Packages -> jobs), ``queue``
(workers), ``build`` (the sandboxed pipeline, returns an ``outcome.RebuildOutcome``), ``attest``
(statement and signature), ``db`` (state), ``publish`` (MQTT outbox), ``api`` (read-only HTTP),
``daemon`` (wires them), ``cli`` (the ``rebuilder`` command).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
