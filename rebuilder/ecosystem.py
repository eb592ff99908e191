"""The node's half of the ecosystem seam: how a repository is watched and how one rebuild runs.

A ``NodeEcosystem`` extends the verifier's ``Ecosystem`` of the same name (grammar, build
type, subject names; ``verifier.ecosystem``) with the two things only a node does: a
``watcher`` that polls the repositories of that ecosystem and queues ``BuildJob`` values, and a
``builder`` that runs one job into a ``RebuildOutcome``. Everything after that (queue, sign,
store, publish, serve) is the generic pipeline and never looks at the ecosystem.

Debian (``rebuilder.debian.node``) is built in and loaded on first use::

    debian = get("debian")
    watcher = debian.watcher(config, store, session, on_new_jobs=pool.wake)
    builder = debian.builder(config, session)      # async (job, work_dir) -> RebuildOutcome
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from verifier import ecosystem as verifier_ecosystems

if TYPE_CHECKING:
    import aiohttp

    from rebuilder.config import Config, RepositoryConfig
    from rebuilder.db import Store
    from rebuilder.outcome import BuildJob
    from rebuilder.queue import Builder

__all__ = [
    "DEFAULT",
    "NodeEcosystem",
    "RepositoryWatcher",
    "UnknownEcosystem",
    "get",
    "names",
    "register",
    "repository_ecosystem",
]

UnknownEcosystem = verifier_ecosystems.UnknownEcosystem
# Every configured repository is an APT repository today: the config has no per-repository
# ecosystem key yet, and ``repository_ecosystem`` is the one place that will read it.
DEFAULT = "debian"
_BUILTIN = {"debian": "rebuilder.debian.node"}


class RepositoryWatcher(Protocol):
    """Polls repositories in the background and queues the jobs it finds."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


class NodeEcosystem(ABC):
    """One ecosystem's node side; subclass and ``register`` (docs/ARCHITECTURE.md)."""

    name: ClassVar[str]  # the verifier ecosystem's name: "debian"

    @property
    def verifier(self) -> verifier_ecosystems.Ecosystem:
        """The verifier half: grammar, build type, subject names."""
        return verifier_ecosystems.get(self.name)

    @abstractmethod
    def watcher(self, config: Config, repositories: tuple[RepositoryConfig, ...],
                store: Store, session: aiohttp.ClientSession,
                on_new_jobs: Callable[[list[BuildJob]], None] | None) -> RepositoryWatcher:
        """The watcher of ``repositories`` (all of this ecosystem), not started yet."""

    @abstractmethod
    def builder(self, config: Config, session: aiohttp.ClientSession) -> Builder:
        """The production builder: one job and its work directory in, one outcome out; it
        never raises for a bad package (``rebuilder.outcome``)."""


_REGISTRY: dict[str, NodeEcosystem] = {}


def register(ecosystem: NodeEcosystem) -> NodeEcosystem:
    """Make ``ecosystem`` known; its verifier half must be registered (``ValueError``)."""
    if ecosystem.name not in verifier_ecosystems.names():
        raise ValueError(f"ecosystem {ecosystem.name!r} has no verifier half"
                         " (verifier.ecosystem.register it first)")
    if _REGISTRY.get(ecosystem.name, ecosystem) is not ecosystem:
        raise ValueError(f"ecosystem {ecosystem.name!r} is already registered")
    _REGISTRY[ecosystem.name] = ecosystem
    return ecosystem


def get(name: object) -> NodeEcosystem:
    """The node ecosystem ``name``; ``UnknownEcosystem`` naming the ones this node has."""
    if isinstance(name, str):
        found = _REGISTRY.get(name)
        if found is not None:
            return found
        if name in _BUILTIN:
            importlib.import_module(_BUILTIN[name])
            return _REGISTRY[name]
    raise UnknownEcosystem(f"ecosystem {name!r:.60} is not one this rebuilder builds"
                           f" ({', '.join(names())})")


def names() -> list[str]:
    return sorted(_BUILTIN.keys() | _REGISTRY.keys())


def repository_ecosystem(repo: RepositoryConfig | None) -> str:
    """The ecosystem whose watcher reads ``repo`` and whose builder rebuilds its jobs."""
    return DEFAULT
