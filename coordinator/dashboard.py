"""The maintainers' dashboard: server-rendered HTML (Jinja2, autoescaped), no JavaScript.

Pages: ``/`` overview (tampered packages first, then transparency-log inconsistencies the
monitor found, rebuilders, recent disagreements),
``/packages`` (search and filters by verdict, ecosystem, suite, architecture),
``/packages/<source>`` (its versions), a package version's page (every artifact, each
rebuilder's digest, quorum at ``?threshold=N``), ``/rebuilders/<id>`` (one rebuilder: key,
its log's inconsistencies, online history, counts, reproducibility over time as SVG, recent
results), ``/queue``, and a mismatch page that frames the rebuilder's diffoscope report.
Reports hold attacker-controlled text, so the coordinator fetches them only from the URL a
*signed* statement named under that rebuilder's registered URL, caps their size, and serves
them with a sandboxing CSP inside an ``<iframe sandbox>``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from coordinator.appstate import (
    CONFIG,
    HTTP,
    PACKAGE_PART,
    STORE,
    int_param,
    package_parts,
    rebuilder_views,
)
from coordinator.log_view import inconsistency_view
from coordinator.store import Store, rfc3339
from coordinator.verdicts import (
    CLASSES,
    open_conflicts,
    output_class,
    reproducibility,
    tampered_artifacts,
)
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.keys import public_key_pem
from verifier.sources import fetcher_for

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
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PAGE_SIZE = 50
_CACHE_BYTES = 64 * 1024 * 1024
_CHART_DAYS = 30
_NODE_DOC_BYTES = 64 * 1024
_NODE_DOC_TIMEOUT = 2.0  # seconds the rebuilder page waits for the node's /v1/node

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
    env.filters["ts"] = timestamp
    env.filters["percent"] = lambda f: "n/a" if f is None else f"{100 * f:.0f}%"
    env.globals["CLASSES"] = CLASSES
    env.globals["LABELS"] = LABELS
    return env


# What each class is called on a badge; "error" builds never got to build (see verdicts).
LABELS = {
    "reproduced": "reproduced",
    "unreproducible": "unreproducible",
    "tampered": "tampered",
    "failed": "build failed",
    "error": "not built",
}


def timestamp(value: str | float | None) -> str:
    """One format everywhere: ``2026-11-21 12:00:00 UTC``, from RFC 3339 text or unix time."""
    if value is None or value == "":
        return "never"
    if isinstance(value, int | float):
        value = rfc3339(float(value)) or ""
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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


async def _with_classes(request: web.Request) -> list[dict[str, Any]]:
    views = await rebuilder_views(request.app)
    classes = await request.app[STORE].class_counts()
    for v in views:
        c = classes.get(v["id"], {})
        v["classes"] = {k: c.get(k, 0) for k in CLASSES}
        v["reproducibility"] = reproducibility(v["classes"])
    return views


async def tampered_alerts(store: Store, limit: int = 10) -> list[dict[str, Any]]:
    """Package versions whose rebuilders reproduced the buildinfo while the repository serves
    other bytes: the attack this network exists to catch, shown above everything else."""
    alerts = []
    for source, version in await store.tampered_packages(limit):
        results = await store.package_results(source, version)
        artifacts = tampered_artifacts([r.to_dict() for r in results])
        if artifacts:
            alerts.append({"source": source, "version": version, "artifacts": artifacts})
    return alerts


async def disagreement_rows(store: Store, rows: list[Any]) -> list[dict[str, Any]]:
    """Disagreements as dicts, each marked open or resolved (its other side revoked)."""
    out = [d.to_dict() for d in rows]
    envelopes = [c["envelope"] for d in out for c in d["conflicts"]]
    reasons = await store.revocation_reasons(envelopes) if envelopes else {}
    for d in out:
        d["open"] = bool(open_conflicts(d["conflicts"], reasons))
        for c in d["conflicts"]:
            c["revoked_reason"] = reasons.get(c["envelope"])
    return out


async def overview(request: web.Request) -> web.Response:
    store = request.app[STORE]
    views = await _with_classes(request)
    disagreements = await disagreement_rows(store, await store.disagreements(limit=20))
    totals = await store.totals()
    found = [inconsistency_view(i.to_dict()) for i in await store.log_inconsistencies(limit=10)]
    return render(
        request, "overview.html", rebuilders=views, disagreements=disagreements, totals=totals,
        tampered=await tampered_alerts(store),
        open_disagreements=sum(1 for d in disagreements if d["open"]),
        log_inconsistencies=found, log_rebuilders={i["rebuilder"] for i in found},
    )


def _choice(request: web.Request, name: str, allowed: list[str] | tuple[str, ...]) -> str:
    value = request.query.get(name, "")
    if value and value not in allowed:
        raise web.HTTPBadRequest(
            text=f"{name} must be one of: {', '.join(allowed) or '(none seen yet)'}"
        )
    return value


async def packages(request: web.Request) -> web.Response:
    query = request.query.get("q", "").strip()
    if not _QUERY.fullmatch(query):
        return render(
            request, "error.html", status=400,
            message="Search for a package name: letters, digits and . + ~ : _ - only.",
        )
    store = request.app[STORE]
    values = await store.filter_values()
    filters = {
        "verdict": _choice(request, "verdict", CLASSES),
        "ecosystem": _choice(request, "ecosystem", ["debian"]),
        "suite": _choice(request, "suite", list(values.suites)),
        "arch": _choice(request, "arch", list(values.architectures)),
    }
    page = int_param(request, "page", 1, 1, 10_000)
    rows = await store.search_packages(
        query, _PAGE_SIZE + 1, (page - 1) * _PAGE_SIZE, verdict=filters["verdict"] or None,
        suite=filters["suite"] or None, architecture=filters["arch"] or None,
    )
    rebuilders = [r.id for r in request.app[CONFIG].rebuilders]
    here = {"q": query, **{k: v for k, v in filters.items() if v}}
    return render(
        request,
        "packages.html",
        query=query,
        filters=filters,
        suites=values.suites,
        architectures=values.architectures,
        page=page,
        packages=[r.to_dict() for r in rows[:_PAGE_SIZE]],
        more=len(rows) > _PAGE_SIZE,
        rebuilders=rebuilders,
        prev_url="/packages?" + urlencode({**here, "page": page - 1}),
        next_url="/packages?" + urlencode({**here, "page": page + 1}),
    )


async def package_history(request: web.Request) -> web.Response:
    source = request.match_info["source"]
    if not PACKAGE_PART.fullmatch(source):
        raise web.HTTPBadRequest(text=f"{source[:80]!r} is not a Debian source package name")
    versions = [v.to_dict() for v in await request.app[STORE].package_versions(source)]
    if not versions:
        return render(
            request, "error.html", status=404,
            message=f"No attestation for any version of {source} yet.",
        )
    return render(
        request, "history.html", source=source, versions=versions,
        rebuilders=[r.id for r in request.app[CONFIG].rebuilders],
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
                "class": output_class(o["verdict"], o["rebuilt"], o["buildinfo"], o["repository"]),
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
    store = app[STORE]
    results = [r.to_dict() for r in await store.package_results(source, version)]
    if not results:
        return render(
            request, "error.html", status=404,
            message=f"No attestation for {source} {version} yet.",
        )
    config = app[CONFIG]
    urls = {r.id: r.url for r in config.rebuilders}
    rebuilders = [r.id for r in config.rebuilders]
    builds = []
    for entry in results:
        if entry["kind"] == "revocation":
            continue
        entry["log_url"] = _log_url(urls.get(entry["rebuilder"]), entry["invocation"])
        builds.append(entry)
    disagreements = await disagreement_rows(store, await store.disagreements_for(source, version))
    return render(
        request,
        "package.html",
        source=source,
        version=version,
        threshold=threshold,
        artifacts=artifact_table(results, rebuilders),
        builds=list(reversed(builds)),
        rebuilders=rebuilders,
        tampered=[{"source": source, "version": version, "artifacts": t}
                  for t in [tampered_artifacts(results)] if t],
        disagreements=disagreements,
        open_disagreements=[d for d in disagreements if d["open"]],
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
    store = request.app[STORE]
    found = await store.output_report(envelope, artifact)
    if found is None:
        return render(request, "error.html", status=404, message="No such attested output.")
    rebuilder, source, version = found.rebuilder, found.source, found.version
    output = found.output.to_dict()
    rb = request.app[CONFIG].rebuilder(rebuilder)
    entry = next(
        (e.to_dict() for e in await store.package_results(source, version,
                                                          ecosystem=found.ecosystem)
         if e.envelope == envelope),
        None,
    )
    return render(
        request,
        "mismatch.html",
        rebuilder=rebuilder,
        operator=rb.operator if rb else "",
        source=source,
        version=version,
        envelope=envelope,
        output=output,
        cls=output_class(
            output["verdict"], output["rebuilt"], output["buildinfo"], output["repository"]
        ),
        entry=entry,
        log_url=_log_url(rb.url if rb else None, entry["invocation"] if entry else None),
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
    rebuilder, url = found.rebuilder, found.output.report_url
    if url is None or not _report_url_allowed(request, rebuilder, url):
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
            body = await fetcher_for(request.app[HTTP], accept="text/html, text/plain").fetch(
                url, max_bytes=limits.max_report_bytes, timeout=limits.report_timeout)
        except HTTPStatusError as e:
            raise web.HTTPBadGateway(
                text=f"rebuilder {rebuilder} answered HTTP {e.status} for the report"
            ) from e
        except UnreachableError as e:
            raise web.HTTPBadGateway(
                text=f"rebuilder {rebuilder} is unreachable for the report: {e.reason}"
            ) from e
        except BadDataError as e:
            raise web.HTTPBadGateway(text=f"report refused: {e.reason}") from e
        cache.put(url, body)
    ctype = "text/html" if url.endswith(".html") else "text/plain"
    return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)


async def disagreements_page(request: web.Request) -> web.Response:
    page = int_param(request, "page", 1, 1, 10_000)
    store = request.app[STORE]
    rows = await store.disagreements(_PAGE_SIZE + 1, (page - 1) * _PAGE_SIZE)
    return render(
        request,
        "disagreements.html",
        disagreements=await disagreement_rows(store, rows[:_PAGE_SIZE]),
        tampered=await tampered_alerts(store),
        page=page,
        more=len(rows) > _PAGE_SIZE,
    )


def chart(series: list[tuple[str, str, int]], today: datetime,
          days: int = _CHART_DAYS) -> list[dict[str, Any]]:
    """One bar per day of the last ``days``: reproducibility of that day's build outcomes."""
    per_day: dict[str, dict[str, int]] = {}
    for day, cls, n in series:
        per_day.setdefault(day, {})[cls] = per_day.setdefault(day, {}).get(cls, 0) + n
    bars = []
    for i in range(days):
        day = (today - timedelta(days=days - 1 - i)).strftime("%Y-%m-%d")
        counts = per_day.get(day, {})
        share = reproducibility(counts)
        bars.append({
            "day": day, "x": i * 10, "share": share,
            "height": 0 if share is None else max(2, round(60 * share)),
            "outcomes": sum(v for k, v in counts.items() if k != "error"),
        })
    return bars


async def _node_document(request: web.Request, url: str) -> tuple[dict[str, Any] | None, str]:
    """The rebuilder's own ``/v1/node`` (for its log checkpoint), or why it is not shown."""
    try:
        body = await fetcher_for(request.app[HTTP]).fetch(
            f"{url}/v1/node", max_bytes=_NODE_DOC_BYTES, timeout=_NODE_DOC_TIMEOUT)
        doc = json.loads(body)
    except HTTPStatusError as e:
        return None, f"{url}/v1/node answered HTTP {e.status}"
    except UnreachableError as e:
        return None, f"{url} is unreachable ({e.reason})"
    except BadDataError as e:
        return None, f"{url}/v1/node is not a node document: {e.reason[:200]}"
    except ValueError as e:
        return None, f"{url}/v1/node is not a node document: {str(e)[:200]}"
    if not isinstance(doc, dict):
        return None, f"{url}/v1/node is not a JSON object"
    return doc, ""


def _log_facts(doc: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Text fields of the node document's transparency log description, when it has one."""
    log = doc.get("log") if doc else None
    if not isinstance(log, dict):
        return []
    facts = []
    for key, value in list(log.items())[:12]:
        if isinstance(value, str | int) and not isinstance(value, bool):
            facts.append((str(key)[:64], str(value)[:2000]))
    return facts


async def rebuilder_page(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    if not _ID.fullmatch(rid):
        raise web.HTTPBadRequest(text="a rebuilder id is letters, digits and . _ - only")
    rb = request.app[CONFIG].rebuilder(rid)
    if rb is None:
        return render(request, "error.html", status=404,
                      message=f"No rebuilder {rid} is registered with this coordinator.")
    store = request.app[STORE]
    page = int_param(request, "page", 1, 1, 10_000)
    view = next(v for v in await _with_classes(request) if v["id"] == rid)
    today = datetime.now(UTC)
    since = (today - timedelta(days=_CHART_DAYS - 1)).strftime("%Y-%m-%d")
    results = await store.rebuilder_results(rid, _PAGE_SIZE + 1, (page - 1) * _PAGE_SIZE)
    if view["online"]:
        doc, doc_error = await _node_document(request, rb.url)
    else:  # do not make the page wait on a node that is known to be away
        doc, doc_error = None, f"{rid} is offline; its /v1/node was not fetched"
    return render(
        request,
        "rebuilder.html",
        rb=view,
        public_key=public_key_pem(rb.public_key),
        history=[h.to_dict() for h in await store.status_history(rid)],
        bars=chart(await store.class_series(rid, since), today),
        results=[r.to_dict() for r in results[:_PAGE_SIZE]],
        page=page,
        more=len(results) > _PAGE_SIZE,
        node_doc=doc,
        node_error=doc_error,
        key_matches=doc is None or doc.get("keyid", rb.keyid) == rb.keyid,
        log_facts=_log_facts(doc),
        log_inconsistencies=[inconsistency_view(i.to_dict()) for i in
                             await store.log_inconsistencies(limit=50, rebuilder=rid)],
    )


async def queue_page(request: web.Request) -> web.Response:
    return render(request, "queue.html", rebuilders=await _with_classes(request))


_STATUS_TEXT = {400: "Bad request", 404: "Not found", 405: "Method not allowed",
                500: "Server error", 502: "Bad gateway"}


def _message(e: web.HTTPException) -> str:
    """An HTTP error's text, unwrapped from the API's ``{"error": ...}`` JSON."""
    text = e.text or ""
    if text.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            text = str(json.loads(text).get("error", text))
    if not text or text == f"{e.status}: {e.reason}":
        text = {404: "There is no page at this address."}.get(e.status, e.reason)
    return text


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors of dashboard pages as HTML pages; the JSON API and metrics keep their own."""
    api = request.path.startswith(("/v1/", "/reports/", "/metrics", "/healthz"))
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as e:
        if api or e.status < 400:
            raise
        return render(request, "error.html", status=e.status, message=_message(e),
                      title=_STATUS_TEXT.get(e.status, "Error"))


def setup(app: web.Application) -> None:
    app[TEMPLATES] = _environment()
    app[REPORTS] = ReportCache()
    app.middlewares.append(_errors)
    app.router.add_get("/", overview, name="overview")
    app.router.add_get("/packages", packages, name="packages")
    app.router.add_get("/packages/{source}", package_history, name="history")
    app.router.add_get("/packages/{source}/{version}", package, name="package")
    app.router.add_get("/rebuilders/{id}", rebuilder_page, name="rebuilder")
    app.router.add_get("/queue", queue_page, name="queue")
    app.router.add_get("/disagreements", disagreements_page, name="disagreements")
    app.router.add_get("/mismatch/{envelope}/{artifact}", mismatch, name="mismatch")
    app.router.add_get("/reports/{envelope}/{artifact}", report, name="report")
