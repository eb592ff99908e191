"""The error families every repro-quorum package raises.

``BadDataError``: a peer (a rebuilder, a coordinator, a file, a package being built) sent data
that does not pass a check. ``UnreachableError``: we could not get the data at all (its
``HTTPStatusError`` keeps the status as a number). ``ConfigError``: a local configuration file
or command line is invalid, naming the file, table and key when it can. All carry structured
fields so callers can report them without parsing text; ``VerifierError`` is their root, and
the few errors that are none of the three (a daemon task that died, a demo that failed) derive
from it directly and chain the error that caused them (``raise ... from e``).

A package's own error types subclass one of these and keep their own message::

    class SchemaError(BadDataError):
        def __init__(self, message: str) -> None:
            super().__init__("state database", message, message=message)
"""

from __future__ import annotations

__all__ = [
    "BadDataError",
    "ConfigError",
    "HTTPStatusError",
    "UnreachableError",
    "VerifierError",
]


class VerifierError(Exception):
    """Base class of every error raised on purpose by repro-quorum."""


class BadDataError(VerifierError):
    """Data from outside failed a check: malformed, oversized, wrongly signed.

    ``what`` names the object (``"envelope"``, ``"statement"``, ``"policy"``...), ``reason``
    says what was seen and what was expected. ``message``, when given, is the text shown
    instead of ``"<what>: <reason>"`` (for subclasses whose message already says it all).
    """

    def __init__(self, what: str, reason: str, *, message: str | None = None) -> None:
        super().__init__(f"{what}: {reason}" if message is None else message)
        self.what = what
        self.reason = reason


class UnreachableError(VerifierError):
    """A peer could not be reached or did not answer in time."""

    def __init__(self, url: str, reason: str, *, message: str | None = None) -> None:
        super().__init__(f"{url}: {reason}" if message is None else message)
        self.url = url
        self.reason = reason


class ConfigError(VerifierError):
    """A local configuration file (policy, node config) or command line is invalid.

    ``file``, ``table`` and ``key`` name where, when known (``table`` as written in TOML:
    ``"mqtt"``, ``"repository[0]"``); the message already includes them.
    """

    def __init__(
        self, message: str, *, file: str | None = None, table: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.table = table
        self.key = key


class HTTPStatusError(UnreachableError):
    """A peer answered with an HTTP status other than 200 (``status`` holds it)."""

    def __init__(self, url: str, status: int, reason: str | None = None) -> None:
        super().__init__(url, f"HTTP status {status}" if reason is None else reason)
        self.status = status
