"""repro-quorum's coordinator."""
