"""repro-quorum's verifier: formats, the quorum decision, and the client installers run.

The verifier is the smallest and most trusted part: it checks every signature itself and trusts
no server's word. It imports neither ``rebuilder`` nor ``coordinator``.
"""

from verifier.debian import (
    BUILD_TYPE,
    DebIdentity,
    canonical_deb_name,
    read_deb_identity,
    sha256_file,
)
from verifier.decision import (
    Artifact,
    BadResponse,
    Evidence,
    QuorumResult,
    RebuilderResult,
    Status,
    Unreachable,
    assess,
    conclude,
    decide,
    is_settled,
)
from verifier.dsse import IN_TOTO_PAYLOAD_TYPE, MAX_ENVELOPE_BYTES, Envelope, pae, sign
from verifier.errors import (
    BadDataError,
    ConfigError,
    HTTPStatusError,
    UnreachableError,
    VerifierError,
)
from verifier.keys import (
    KeyId,
    generate_private_key,
    keyid,
    load_private_key,
    load_public_key,
    public_key_pem,
    save_private_key,
)
from verifier.policy import DEFAULT_POLICY_PATH, Distrust, Policy, TrustedRebuilder
from verifier.sources import (
    AiohttpFetcher,
    ClientConfig,
    FetcherInterface,
    check_offline,
    check_online,
    check_via_coordinator,
    group_by_key,
    load_attestations,
    open_fetcher,
)
from verifier.statement import (
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
    "DEFAULT_POLICY_PATH",
    "IN_TOTO_PAYLOAD_TYPE",
    "MAX_ENVELOPE_BYTES",
    "AiohttpFetcher",
    "Artifact",
    "BadDataError",
    "BadResponse",
    "ClientConfig",
    "ConfigError",
    "DebIdentity",
    "Digest",
    "Distrust",
    "Envelope",
    "Evidence",
    "FetcherInterface",
    "HTTPStatusError",
    "KeyId",
    "OutputVerdict",
    "PackageIdentity",
    "Policy",
    "QuorumResult",
    "RebuildStatement",
    "RebuilderResult",
    "RevocationStatement",
    "Status",
    "Subject",
    "TrustedRebuilder",
    "Unreachable",
    "UnreachableError",
    "VerifierError",
    "__version__",
    "assess",
    "canonical_deb_name",
    "check_offline",
    "check_online",
    "check_via_coordinator",
    "conclude",
    "decide",
    "generate_private_key",
    "group_by_key",
    "is_settled",
    "keyid",
    "load_attestations",
    "load_private_key",
    "load_public_key",
    "open_fetcher",
    "pae",
    "parse_statement",
    "public_key_pem",
    "read_deb_identity",
    "save_private_key",
    "sha256_file",
    "sign",
]
