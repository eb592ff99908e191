"""The ecosystem seam: what differs between package ecosystems, behind one interface.

A statement names its ecosystem (``externalParameters.package.ecosystem``, ARCHITECTURE §4.2)
and a build type; both are looked up here, never compared with a hard-coded ``"debian"``. An
``Ecosystem`` owns, for the verifier: the grammar of a package identity (name, version,
architecture), the build types its statements carry, the canonical subject name of an artifact,
and how the identity of an artifact is read from the artifact itself. (The node's half, how a
repository is watched and how one rebuild runs, is ``rebuilder.ecosystem``.)

Debian (``verifier.debian``) is built in and loaded on first use; another ecosystem is one class
and one ``register`` call (docs/ARCHITECTURE.md, "The ecosystem seam")::

    debian = get("debian")
    debian.package_problem("hello", "2.10-3", "amd64")     # None: a valid identity
    debian.subject_name("hello", "1:2.10-3", "amd64")       # 'hello_2.10-3_amd64.deb'
    identity = debian.read_identity(Path("hello_2.10-3_amd64.deb"))
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from verifier.statement import PackageIdentity

__all__ = [
    "ArtifactIdentity",
    "Ecosystem",
    "UnknownEcosystem",
    "by_build_type",
    "get",
    "names",
    "register",
]

# Ecosystems shipped with repro-quorum: name -> the module that registers it when imported.
# Imported on first use, so ``import verifier`` loads none of them.
_BUILTIN = {"debian": "verifier.debian"}


class UnknownEcosystem(LookupError):
    """No ecosystem of that name (or build type) is registered."""


class ArtifactIdentity(Protocol):
    """The identity of the file being decided on, read from the file itself (never its path).

    ``package``/``version``/``architecture`` name the artifact (a Debian binary package);
    ``source``/``source_version`` what a rebuilder rebuilt to produce it, which is what
    statements name and what ``/v1/packages/<ecosystem>/<source>/<source_version>`` serves.
    """

    @property
    def ecosystem(self) -> str: ...
    @property
    def package(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def source_version(self) -> str: ...
    @property
    def subject_name(self) -> str: ...

    def built_by(self, rebuilt: PackageIdentity) -> bool:
        """True when a statement's package (what was rebuilt) is a build of this artifact."""
        ...


class Ecosystem(ABC):
    """One package ecosystem. Subclass, fill in the class attributes and methods, ``register``.

    Every method is pure (no I/O) except ``read_identity``, which reads the artifact.
    """

    name: ClassVar[str]  # as written in statements and URLs: lowercase, e.g. "debian"
    build_type: ClassVar[str]  # the buildType new statements of this ecosystem carry
    # older build types still read, in the earlier verdict words (verifier.verdicts.read_v1)
    legacy_build_types: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def lookup_problem(self, name: object, version: object) -> str | None:
        """None when (name, version) may name a rebuilt package (as in
        ``/v1/packages/<ecosystem>/<name>/<version>``); else what is wrong, starting with the
        part (``package name``, ``package version``) and saying what was expected."""

    @abstractmethod
    def package_problem(self, name: object, version: object, architecture: object) -> str | None:
        """As ``lookup_problem``, for a statement's whole package identity (also
        ``package architecture``)."""

    @abstractmethod
    def subject_name(self, name: str, version: str, architecture: str) -> str:
        """The canonical file name of an artifact, as subjects and verdicts name it."""

    @abstractmethod
    def read_identity(self, path: Path) -> ArtifactIdentity:
        """The identity of the artifact at ``path``, read from its contents;
        ``BadDataError`` when it is not a readable artifact of this ecosystem."""


_REGISTRY: dict[str, Ecosystem] = {}
_BY_BUILD_TYPE: dict[str, tuple[Ecosystem, bool]] = {}  # build type -> (ecosystem, legacy)


def register(ecosystem: Ecosystem) -> Ecosystem:
    """Make ``ecosystem`` known by its name and build types; returns it. Registering another
    object under a taken name or build type is refused (``ValueError``)."""
    name = ecosystem.name
    if not isinstance(name, str) or not name.isascii() or not name.isalnum() or not name.islower():
        raise ValueError(f"ecosystem name {name!r} must be lowercase ASCII letters and digits")
    if _REGISTRY.get(name, ecosystem) is not ecosystem:
        raise ValueError(f"ecosystem {name!r} is already registered")
    types = [(ecosystem.build_type, False), *((t, True) for t in ecosystem.legacy_build_types)]
    for build_type, _ in types:
        owner = _BY_BUILD_TYPE.get(build_type)
        if owner is not None and owner[0] is not ecosystem:
            raise ValueError(f"build type {build_type} is already ecosystem {owner[0].name!r}'s")
    _REGISTRY[name] = ecosystem
    for build_type, legacy in types:
        _BY_BUILD_TYPE[build_type] = (ecosystem, legacy)
    return ecosystem


def _load_builtins() -> None:
    for module in _BUILTIN.values():
        importlib.import_module(module)  # registers itself


def get(name: object) -> Ecosystem:
    """The ecosystem registered as ``name``; ``UnknownEcosystem`` naming the known ones."""
    if isinstance(name, str):
        found = _REGISTRY.get(name)
        if found is not None:
            return found
        if name in _BUILTIN:
            importlib.import_module(_BUILTIN[name])
            return _REGISTRY[name]
    raise UnknownEcosystem(f"ecosystem {name!r} is not one this verifier knows"
                           f" ({', '.join(names())})")


def by_build_type(build_type: object) -> tuple[Ecosystem, bool]:
    """(the ecosystem whose statements carry ``build_type``, whether it is a legacy type)."""
    if isinstance(build_type, str):
        found = _BY_BUILD_TYPE.get(build_type)
        if found is None and len(_REGISTRY) < len(_BUILTIN | _REGISTRY):
            _load_builtins()
            found = _BY_BUILD_TYPE.get(build_type)
        if found is not None:
            return found
    _load_builtins()
    known = sorted(t for t, (_, legacy) in _BY_BUILD_TYPE.items() if not legacy)
    raise UnknownEcosystem(f"buildType {build_type!r} is not one this verifier knows"
                           f" (expected {' or '.join(known)})")


def names() -> list[str]:
    """Every ecosystem this verifier knows: the built-in ones and those registered."""
    return sorted(_BUILTIN.keys() | _REGISTRY.keys())
