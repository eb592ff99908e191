"""The two families of error the verifier raises.

``BadDataError``: a peer (a rebuilder, a coordinator, a file) sent data that does not pass a
check. ``UnreachableError``: we could not get the data at all. Both carry structured fields so
callers can report them without parsing text.
"""

from __future__ import annotations


class VerifierError(Exception):
    """Base class of every error raised on purpose by repro-quorum."""


class BadDataError(VerifierError):
    """Data from outside failed a check: malformed, oversized, wrongly signed.

    ``what`` names the object (``"envelope"``, ``"statement"``, ``"policy"``...), ``reason``
    says what was seen and what was expected.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class UnreachableError(VerifierError):
    """A peer could not be reached or did not answer in time."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class ConfigError(VerifierError):
    """A local configuration file (policy, node config) is invalid."""


class HTTPStatusError(UnreachableError):
    """A peer answered with an HTTP status other than 200 (``status`` holds it)."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(url, f"HTTP status {status}")
        self.status = status
