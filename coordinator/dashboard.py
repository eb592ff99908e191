"""The maintainers' dashboard: server-rendered HTML (Jinja2, autoescaped), no JavaScript.

Pages: ``/`` overview (rebuilders, recent disagreements), ``/packages`` (search), a package
version's page (every artifact, each rebuilder's digest, quorum at ``?threshold=N``), and a
mismatch page that frames the rebuilder's diffoscope report. Reports hold attacker-controlled
text, so the coordinator fetches them only from the URL a *signed* statement named under that
rebuilder's registered URL, caps their size, and serves them with a sandboxing CSP inside an
``<iframe sandbox>``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import aiohttp
import jinja2
from aiohttp import web

from coordinator.app import CONFIG, HTTP, STORE, int_param, package_parts, rebuilder_views
from coordinator.catchup import read_capped
from coordinator.store import rfc3339
from verifier.errors import BadDataError

__all__ = ["REPORT_CSP", "setup"]

REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ARTIFACT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:_-]{0,254}")
_REPORT_PATH = re.compile(r"/v1/reports/[A-Za-z0-9._-]{1,200}\.(html|txt)")
_QUERY = re.compile(r"[A-Za-z0-9.+~:_-]{0,100}")
_PAGE_SIZE = 50
_CACHE_BYTES = 64 * 1024 * 1024

TEMPLATES = web.AppKey("templates", jinja2.Environment)


class ReportCache:
    """Recently proxied reports, bounded by total size: a report is immutable once signed."""

    def __init__(self, limit: int = _CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, url: str) -> bytes | None:
        body = self._items.get(url)
        if body is not None:
            self._items.move_to_end(url)
        return body

    def put(self, url: str, body: bytes) -> None:
        if url in self._items or len(body) > self.limit:
            return
        self._items[url] = body
        self.size += len(body)
        while self.size > self.limit:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)


REPORTS = web.AppKey("report_cache", ReportCache)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("coordinator", "templates"),
        autoescape=True,  # everything shown comes from rebuilders: escape all of it
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = lambda d: (d or "")[:12]
    env.filters["q"] = lambda s: quote(str(s), safe="")
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    html = request.app[TEMPLATES].get_template(template).render(
        config=request.app[CONFIG], now=rfc3339(time.time()), **context
    )
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _percent(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "n/a"
    return f"{100 * counts.get('reproduced', 0) / total:.0f}%"


async def overview(request: web.Request) -> web.Response:
    store = request.app[STORE]
    views = await rebuilder_views(request.app)
    for v in views:
        v["reproducibility"] = _percent(v["counts"])
    disagreements = [d.to_dict() for d in await store.disagreements(limit=20)]
    totals = await store.totals()
    return render(
        request, "overview.html", rebuilders=views, disagreements=disagreements, totals=totals
    )


async def packages(request: web.Request) -> web.Response:
    query = request.query.get("q", "").strip()
    if not _QUERY.fullmatch(query):
        return render(
            request, "error.html", status=400,
            message="Search for a package name: letters, digits and . + ~ : _ - only.",
        )
    page = int_param(request, "page", 1, 1, 10_000)
    rows = await request.app[STORE].search_packages(
        query, _PAGE_SIZE + 1, (page - 1) * _PAGE_SIZE
    )
    rebuilders = [r.id for r in request.app[CONFIG].rebuilders]
    return render(
        request,
        "packages.html",
        query=query,
        page=page,
        packages=rows[:_PAGE_SIZE],
        more=len(rows) > _PAGE_SIZE,
        rebuilders=rebuilders,
    )


def artifact_table(
    results: list[dict[str, Any]], rebuilders: list[str]
) -> list[dict[str, Any]]:
    """Per artifact: the published digest and each rebuilder's latest unrevoked output.

    Each rebuilder counts once (its latest unrevoked statement), however many it signed: five
    statements from one rebuilder do not outvote two from others on the published digest.
    """
    artifacts: dict[str, dict[str, Any]] = {}
    for entry in results:  # oldest first: later attestations replace earlier ones
        if entry["revoked"] or entry["kind"] != "rebuild":
            continue
        for o in entry["outputs"]:
            a = artifacts.setdefault(
                o["name"], {"name": o["name"], "upstream": {}, "by": {}}
            )
            a["by"][entry["rebuilder"]] = {
                **o,
                "envelope": entry["envelope"],
                "invocation": entry["invocation"],
            }
    table = []
    for name in sorted(artifacts):
        a = artifacts[name]
        for o in a["by"].values():
            if o["repository"]:
                a["upstream"][o["repository"]] = a["upstream"].get(o["repository"], 0) + 1
        # Rebuilders report what the repository published; normally they all agree on it.
        upstream = max(a["upstream"], key=a["upstream"].get) if a["upstream"] else None
        agreeing = sorted(
            r for r, o in a["by"].items() if upstream and o["rebuilt"] == upstream
        )
        table.append(
            {
                "name": name,
                "upstream": upstream,
                "upstream_disputed": len(a["upstream"]) > 1,
                "cells": [(r, a["by"].get(r)) for r in rebuilders],
                "agreeing": agreeing,
            }
        )
    return table


async def package(request: web.Request) -> web.Response:
    source, version = package_parts(request)
    threshold = int_param(request, "threshold", 2, 1, 100)
    app = request.app
    results = await app[STORE].package_results(source, version)
    if not results:
        return render(
            request, "error.html", status=404,
            message=f"No attestation for {source} {version} yet.",
        )
    config = app[CONFIG]
    urls = {r.id: r.url for r in config.rebuilders}
    rebuilders = [r.id for r in config.rebuilders]
    builds = []
    latest: dict[str, dict[str, Any]] = {}
    for entry in results:
        if entry["kind"] == "revocation":
            continue
        entry["log_url"] = _log_url(urls.get(entry["rebuilder"]), entry["invocation"])
        builds.append(entry)
        latest[entry["rebuilder"]] = entry
    return render(
        request,
        "package.html",
        source=source,
        version=version,
        threshold=threshold,
        artifacts=artifact_table(results, rebuilders),
        builds=list(reversed(builds)),
        rebuilders=rebuilders,
        latest=latest,
        disagreements=[d.to_dict() for d in await app[STORE].disagreements_for(source, version)],
    )


def _log_url(base: str | None, invocation: str | None) -> str | None:
    """The node's build log: ``/v1/builds/<job>/log``; a node's invocation id is
    ``<node>/<job>/<attempt>`` (a plain build id is used as it is)."""
    if not base or not invocation:
        return None
    parts = invocation.split("/")
    build = parts[1] if len(parts) == 3 and parts[1].isdigit() else invocation
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", build):
        return None
    return f"{base}/v1/builds/{build}/log"


def _checked_params(request: web.Request) -> tuple[str, str]:
    envelope = request.match_info["envelope"]
    artifact = request.match_info["artifact"]
    if not _HEX64.fullmatch(envelope) or not _ARTIFACT.fullmatch(artifact):
        raise web.HTTPBadRequest(text="envelope must be 64 hex digits and artifact a file name")
    return envelope, artifact


async def mismatch(request: web.Request) -> web.Response:
    envelope, artifact = _checked_params(request)
    found = await request.app[STORE].output_report(envelope, artifact)
    if found is None:
        return render(request, "error.html", status=404, message="No such attested output.")
    rebuilder, source, version, output = found
    rb = request.app[CONFIG].rebuilder(rebuilder)
    return render(
        request,
        "mismatch.html",
        rebuilder=rebuilder,
        operator=rb.operator if rb else "",
        source=source,
        version=version,
        envelope=envelope,
        output=output,
        report_allowed=_report_url_allowed(request, rebuilder, output["report_url"]),
    )


def _report_url_allowed(request: web.Request, rebuilder: str, url: str | None) -> bool:
    """Fetch only what a signed statement named, and only from that rebuilder's own API."""
    rb = request.app[CONFIG].rebuilder(rebuilder)
    if rb is None or not url or not url.startswith(rb.url + "/"):
        return False
    return bool(_REPORT_PATH.fullmatch(url[len(rb.url) :]))


async def report(request: web.Request) -> web.Response:
    envelope, artifact = _checked_params(request)
    found = await request.app[STORE].output_report(envelope, artifact)
    if found is None:
        raise web.HTTPNotFound(text="no such attested output")
    rebuilder, _, _, output = found
    url = output["report_url"]
    if not _report_url_allowed(request, rebuilder, url):
        raise web.HTTPNotFound(text="this output names no report on its rebuilder's API")
    headers = {
        "Content-Security-Policy": REPORT_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "private, max-age=300",
    }
    cache = request.app[REPORTS]
    body = cache.get(url)
    if body is None:
        limits = request.app[CONFIG].limits
        try:
            async with asyncio.timeout(limits.report_timeout):
                async with request.app[HTTP].get(url, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise web.HTTPBadGateway(
                            text=f"rebuilder {rebuilder} answered HTTP {resp.status} for the report"
                        )
                    body = await read_capped(resp, limits.max_report_bytes, "report")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise web.HTTPBadGateway(
                text=f"rebuilder {rebuilder} is unreachable for the report: {type(e).__name__}"
            ) from e
        except BadDataError as e:
            raise web.HTTPBadGateway(text=f"report refused: {e}") from e
        cache.put(url, body)
    ctype = "text/html" if url.endswith(".html") else "text/plain"
    return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)


async def disagreements_page(request: web.Request) -> web.Response:
    page = int_param(request, "page", 1, 1, 10_000)
    rows = await request.app[STORE].disagreements(_PAGE_SIZE + 1, (page - 1) * _PAGE_SIZE)
    return render(
        request,
        "disagreements.html",
        disagreements=[d.to_dict() for d in rows[:_PAGE_SIZE]],
        page=page,
        more=len(rows) > _PAGE_SIZE,
    )


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPBadRequest as e:
        if request.path.startswith("/v1/") or request.path.startswith("/reports/"):
            raise
        return render(request, "error.html", status=400, message=e.text or "Bad request.")


def setup(app: web.Application) -> None:
    app[TEMPLATES] = _environment()
    app[REPORTS] = ReportCache()
    app.middlewares.append(_errors)
    app.router.add_get("/", overview, name="overview")
    app.router.add_get("/packages", packages, name="packages")
    app.router.add_get("/packages/{source}/{version}", package, name="package")
    app.router.add_get("/disagreements", disagreements_page, name="disagreements")
    app.router.add_get("/mismatch/{envelope}/{artifact}", mismatch, name="mismatch")
    app.router.add_get("/reports/{envelope}/{artifact}", report, name="report")
