"""A log that says each kind of problem at most once a minute, and counts every occurrence.

Hostile input must not flood the log (one broker once produced 87,958 ERROR lines in 75 s)::

    dropped = RateLimitedLog(log)
    dropped("invalid-topic", "dropped a malformed PUBLISH: %s", error)
    dropped.counts["invalid-topic"]   # exact, for /metrics
"""

from __future__ import annotations

import logging
import time
from collections import Counter

__all__ = ["RateLimitedLog"]

class RateLimitedLog:
    """At most one log line per reason per ``interval`` seconds; the counts stay exact."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()

    def __call__(self, reason: str, message: str, *args: object) -> None:
        self.counts[reason] += 1
        self._since[reason] += 1
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            return
        self._last[reason] = now
        n, self._since[reason] = self._since[reason], 0
        if last is None:
            self.logger.warning(message + " (more of this kind: counted, logged once a minute)",
                                *args)
        else:
            self.logger.warning(message + " (%d of this kind since the last line, %d in all)",
                                *args, n, self.counts[reason])
