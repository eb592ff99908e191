"""The maintainers' dashboard (placeholder until the templates land)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    return None
