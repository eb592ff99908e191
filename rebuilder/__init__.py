"""repro-quorum's rebuilder."""
