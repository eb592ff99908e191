"""in-toto v0.9 links for Debian's quorum client, ``apt-transport-in-toto`` (ARCHITECTURE §4.10).

The transport asks each rebuilder it trusts for ``/sources/<binary name>/<binary version>/metadata``
and counts the links against a root layout (``verifier intoto-layout`` writes one). A link is
derived from a rebuild attestation this node already signed and stored: it names the reproduced
``.deb`` as its only product, under the file name APT gives the download
(``<name>_<version with ':' as %3a>_<arch>.deb``), and is signed with the node's Ed25519 key in
securesystemslib's form, whose keyid is securesystemslib's (not ours)::

    link = link_for(statements, "hello", "2.10-3")      # None: nothing reproduced
    body = sign_link(link, signer)                      # the Metablock the transport reads

Only outputs whose verdict is ``reproduced`` (rebuilt digest equal to the published one) become
products; a revoked attestation contributes nothing. Ed25519 signatures are deterministic, so the
same link is served byte for byte on every request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from debian.debian_support import Version
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]  # re-exported without __all__

from verifier.keys import Ed25519PrivateKey, Ed25519PublicKey
from verifier.statement import RebuildStatement

__all__ = [
    "LINK_STEP",
    "apt_deb_name",
    "link_for",
    "link_signer",
    "sign_link",
    "sslib_key",
]

LINK_STEP = "rebuild"  # the step name of apt-transport-in-toto's default layout


def sslib_key(public_key: Ed25519PublicKey) -> SSlibKey:
    """The node's key as securesystemslib sees it (its keyid is what layouts list)."""
    return SSlibKey.from_crypto(public_key, scheme="ed25519")


def link_signer(private_key: Ed25519PrivateKey) -> CryptoSigner:
    return CryptoSigner(private_key, sslib_key(private_key.public_key()))


def apt_deb_name(name: str, version: str, arch: str) -> str:
    """The file name APT downloads a package to: the epoch's ':' is written %3a."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


@dataclass(frozen=True, slots=True)
class _Product:
    file: str
    sha256: str


def _epoch(version: str) -> str:
    return str(Version(version).epoch or "0")


def _pool_prefix(name: str, version: str) -> str:
    """The start of the repository's file names for that package: its version has no epoch."""
    return f"{name}_{version.split(':', 1)[1] if ':' in version else version}_"


def link_for(
    statements: Iterable[RebuildStatement], name: str, version: str
) -> dict[str, Any] | None:
    """The unsigned link body for binary package ``name`` at ``version``, or None.

    ``statements`` are this node's non-revoked rebuild statements that have a subject for that
    package. A product is taken from an output whose verdict is ``reproduced`` and whose rebuilt
    digest equals the repository's: the .deb's file name carries no epoch, so the epoch of the
    requested version must be the epoch of the statement's version.
    """
    epoch = _epoch(version)
    prefix = _pool_prefix(name, version)
    products: dict[str, _Product] = {}
    materials: dict[str, dict[str, str]] = {}
    for st in statements:
        if st.failure is not None or _epoch(st.package.version) != epoch:
            continue
        for v in st.verdicts:
            if (
                v.verdict != "reproduced"
                or not v.name.startswith(prefix)
                or not v.name.endswith(".deb")
                or v.rebuilt is None
                or v.rebuilt != v.repository
            ):
                continue
            arch = v.name[len(prefix):-len(".deb")]
            if not arch or "_" in arch:
                continue
            file = apt_deb_name(name, version, arch)
            products[file] = _Product(file, v.rebuilt)
            if st.buildinfo_sha256 is not None:
                materials[st.buildinfo_uri.rsplit("/", 1)[-1]] = {"sha256": st.buildinfo_sha256}
    if not products:
        return None
    return {
        "_type": "link",
        "name": LINK_STEP,
        "command": [],
        "materials": dict(sorted(materials.items())),
        "products": {p.file: {"sha256": p.sha256} for p in sorted(products.values(),
                                                                 key=lambda p: p.file)},
        "byproducts": {},
        "environment": {},
    }


def sign_link(link: dict[str, Any], signer: CryptoSigner) -> bytes:
    """The Metablock ``{"signed": link, "signatures": [...]}`` as served.

    The signature is over securesystemslib's canonical JSON of ``signed``, which is what in-toto
    checks after re-reading the link.
    """
    canonical = encode_canonical(link)
    assert canonical is not None  # None only when writing to a file-like object
    sig = signer.sign(canonical.encode("utf-8"))
    return json.dumps(
        {"signed": link, "signatures": [{"keyid": sig.keyid, "sig": sig.signature}]},
        sort_keys=True, separators=(",", ":"),
    ).encode()
