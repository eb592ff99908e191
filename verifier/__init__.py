"""repro-quorum's verifier: formats, the quorum decision, and the client installers run.

The verifier is the smallest and most trusted part: it checks every signature itself and trusts
no server's word. It imports neither ``rebuilder`` nor ``coordinator``.
"""

from verifier.debian import DebIdentity, canonical_deb_name, read_deb_identity, sha256_file
from verifier.dsse import IN_TOTO_PAYLOAD_TYPE, MAX_ENVELOPE_BYTES, Envelope, pae, sign
from verifier.errors import BadDataError, ConfigError, UnreachableError, VerifierError
from verifier.keys import (
    KeyId,
    generate_private_key,
    keyid,
    load_private_key,
    load_public_key,
    public_key_pem,
    save_private_key,
)
from verifier.statement import (
    BUILD_TYPE,
    Digest,
    OutputVerdict,
    PackageIdentity,
    RebuildStatement,
    RevocationStatement,
    Subject,
    parse_statement,
)

__version__ = "0.1.0"

__all__ = [
    "BUILD_TYPE",
    "IN_TOTO_PAYLOAD_TYPE",
    "MAX_ENVELOPE_BYTES",
    "BadDataError",
    "ConfigError",
    "DebIdentity",
    "Digest",
    "Envelope",
    "KeyId",
    "OutputVerdict",
    "PackageIdentity",
    "RebuildStatement",
    "RevocationStatement",
    "Subject",
    "UnreachableError",
    "VerifierError",
    "__version__",
    "canonical_deb_name",
    "generate_private_key",
    "keyid",
    "load_private_key",
    "load_public_key",
    "pae",
    "parse_statement",
    "public_key_pem",
    "read_deb_identity",
    "save_private_key",
    "sha256_file",
    "sign",
]
