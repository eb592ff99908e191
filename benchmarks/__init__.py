"""Reproducible performance measurements; `make bench` runs them all."""
