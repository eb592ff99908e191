"""Where attestations come from: files, each trusted rebuilder, or a coordinator.

Nothing here decides anything; it gathers envelope bytes for ``verifier.decision``. The network
sits behind one small seam, ``FetcherInterface`` (one method to implement, like python-tuf's):
its public ``fetch`` enforces a response size cap and a per-request timeout and turns every
failure into ``UnreachableError`` or ``BadDataError`` (an HTTP status other than 200 stays a
number: ``HTTPStatusError.status``); ``download_file`` streams into a file like python-tuf's.
Every network reader of the three packages goes through it. ``AiohttpFetcher`` is the
production one::

    async with open_fetcher() as fetcher:
        result = await check_online(artifact, policy, fetcher, now=datetime.now(UTC))
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from verifier._neterrors import describe_error
from verifier.decision import (
    NOT_A_REBUILDER,
    NOT_WAITED_FOR,
    Artifact,
    BadResponse,
    QuorumResult,
    RebuilderResult,
    Status,
    Unreachable,
    assess,
    conclude,
    decide,
    is_settled,
)
from verifier.dsse import Envelope, strict_json_loads
from verifier.errors import BadDataError, ConfigError, HTTPStatusError, UnreachableError
from verifier.keys import Ed25519PublicKey, KeyId
from verifier.policy import Policy, TrustedRebuilder
from verifier.statement import Digest

if TYPE_CHECKING:  # aiohttp is imported on first use: `import verifier` stays light (offline)
    import aiohttp

__all__ = [
    "AiohttpFetcher",
    "ClientConfig",
    "FetcherInterface",
    "TooLargeError",
    "check_announced",
    "check_many_via_coordinator",
    "check_offline",
    "check_online",
    "check_via_coordinator",
    "fetcher_for",
    "group_by_key",
    "load_attestations",
    "open_fetcher",
]

MAX_ATTESTATION_FILE_BYTES = 256 * 1024 * 1024
# The cap of the request being read, for a fetcher that can refuse a body by its announced
# length before reading it (``AiohttpFetcher``: Content-Length); set by the seam around ``_fetch``.
_CAP: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("cap", default=None)


class TooLargeError(BadDataError):
    """A body over the cap: ``announced`` is the length the peer announced (refused before
    reading it), None when it was cut while streaming; ``limit`` is the cap."""

    def __init__(self, what: str, url: str, limit: int, announced: int | None = None) -> None:
        reason = (f"{url} sent more than the {limit}-byte limit" if announced is None else
                  f"{url} announced {announced} bytes, over the {limit}-byte limit")
        super().__init__(what, reason)
        self.url = url
        self.limit = limit
        self.announced = announced


def check_announced(url: str, length: int | None) -> None:
    """For a ``_fetch`` implementation: refuse a body whose announced ``length`` is over the
    cap of the request being read (raises ``TooLargeError``)."""
    cap = _CAP.get()
    if cap is not None and length is not None and length > cap[1]:
        raise TooLargeError(cap[0], url, cap[1], length)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Limits for online queries; every number is a bound on what a peer can make us do."""

    timeout: float = 10.0  # seconds for one request, connection to last byte
    max_response_bytes: int = 16 * 1024 * 1024
    max_envelopes: int = 1000  # per response
    settle_grace: float = 1.0  # seconds to wait for the rest once the outcome is settled

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= 600:
            raise ConfigError(f"client timeout {self.timeout} must be in (0, 600] seconds")
        if not 0 <= self.settle_grace <= 600:
            raise ConfigError(f"settle grace {self.settle_grace} must be in [0, 600] seconds")
        if self.max_response_bytes < 1024 or self.max_envelopes < 1:
            raise ConfigError("client limits must allow at least 1 KiB and one envelope")


class FetcherInterface(abc.ABC):
    """Fetch one URL. Implement ``_fetch``; callers use ``fetch``."""

    @abc.abstractmethod
    def _fetch(self, url: str) -> AsyncGenerator[bytes, None]:
        """Yield the body of a GET ``url`` in chunks. Raise ``HTTPStatusError`` for a status
        other than 200; any other exception means the peer could not be reached."""

    # The seam enforces the per-request timeout itself (python-tuf's design), hence the argument.
    async def fetch(self, url: str, *, max_bytes: int, timeout: float) -> bytes:  # noqa: ASYNC109
        """The whole body, at most ``max_bytes``, within ``timeout`` seconds, or an error:
        ``BadDataError`` when the peer sent too much, ``UnreachableError`` for anything else."""
        return await self._collect(lambda: self._fetch(url), url, max_bytes, timeout)

    def _post(self, url: str, body: bytes) -> AsyncGenerator[bytes, None]:
        """Like ``_fetch`` for a POST of a JSON ``body``; fetchers that cannot POST keep this."""
        raise UnreachableError(url, f"{type(self).__name__} cannot send POST requests")

    async def post(
        self, url: str, body: bytes, *, max_bytes: int, timeout: float  # noqa: ASYNC109
    ) -> bytes:
        """``fetch`` for a POST: the same limits and the same two error families."""
        return await self._collect(lambda: self._post(url, body), url, max_bytes, timeout)

    async def download_file(
        self, url: str, dest: Path, *, max_bytes: int, timeout: float,  # noqa: ASYNC109
        sha256: Digest | None = None, size: int | None = None,
    ) -> tuple[Digest, int]:
        """GET ``url`` into ``dest`` (python-tuf's ``download_file``): streamed to a temporary
        file next to it, at most ``max_bytes`` (and ``size`` when given), renamed into place
        only once ``size`` and ``sha256`` match, so ``dest`` never holds unchecked bytes.
        Returns the body's sha256 and size. Errors: as ``fetch``; a local file that cannot be
        written raises its ``OSError``."""
        if size is not None and size > max_bytes:
            raise BadDataError("download", f"{dest.name} is {size} bytes, limit {max_bytes}")
        tmp = dest.with_name(dest.name + ".part")
        h = hashlib.sha256()
        n = 0
        local: OSError | None = None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        token = _CAP.set(("download", max_bytes))
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    async with asyncio.timeout(timeout):
                        async with contextlib.aclosing(self._fetch(url)) as chunks:
                            async for chunk in chunks:
                                n += len(chunk)
                                if n > max_bytes:
                                    raise TooLargeError("download", url, max_bytes)
                                h.update(chunk)
                                try:
                                    out.write(chunk)
                                except OSError as e:  # our disk, not the peer
                                    local = e
                                    break
                except Exception as e:
                    raise _failure(e, url, timeout) from e
            if local is not None:
                raise local
            digest = Digest(h.hexdigest())
            if size is not None and n != size:
                raise BadDataError("download", f"{dest.name}: {n} bytes, expected {size}")
            if sha256 is not None and digest != sha256:
                raise BadDataError("download", f"{dest.name}: sha256 {digest}, expected {sha256}"
                                   " (file was altered)")
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            _CAP.reset(token)
        return digest, n

    async def _collect(
        self, chunks_of: Callable[[], AsyncGenerator[bytes, None]], url: str, max_bytes: int,
        timeout: float,  # noqa: ASYNC109  # the seam enforces the timeout itself
    ) -> bytes:
        buf = bytearray()
        token = _CAP.set(("response", max_bytes))
        try:
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(chunks_of()) as chunks:
                    async for chunk in chunks:
                        buf += chunk
                        if len(buf) > max_bytes:
                            raise TooLargeError("response", url, max_bytes)
        except Exception as e:
            raise _failure(e, url, timeout) from e
        finally:
            _CAP.reset(token)
        return bytes(buf)


def _failure(e: Exception, url: str, timeout: float) -> Exception:
    """The seam's promise: one of the two error families, whatever broke."""
    if isinstance(e, (BadDataError, UnreachableError)):
        return e
    if isinstance(e, TimeoutError):
        return UnreachableError(url, f"no complete answer within {timeout:g}s")
    return UnreachableError(url, describe_error(e))


class AiohttpFetcher(FetcherInterface):
    """The production fetcher over one shared ``aiohttp.ClientSession``. No redirects unless
    ``follow_redirects`` (an APT mirror may redirect; an API answer never does)."""

    def __init__(self, session: aiohttp.ClientSession, *, accept: str = "application/json",
                 follow_redirects: bool = False) -> None:
        self._session = session
        self._accept = accept
        self._redirects = follow_redirects

    async def _fetch(self, url: str) -> AsyncGenerator[bytes, None]:
        async with self._session.get(
            url, allow_redirects=self._redirects, headers={"Accept": self._accept}
        ) as resp:
            if resp.status != 200:
                raise HTTPStatusError(url, resp.status)
            check_announced(url, resp.content_length)
            async for chunk in resp.content.iter_chunked(64 * 1024):
                yield chunk

    async def _post(self, url: str, body: bytes) -> AsyncGenerator[bytes, None]:
        async with self._session.post(
            url, data=body, allow_redirects=False,
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        ) as resp:
            if resp.status != 200:
                raise HTTPStatusError(url, resp.status)
            check_announced(url, resp.content_length)
            async for chunk in resp.content.iter_chunked(64 * 1024):
                yield chunk


def fetcher_for(
    source: aiohttp.ClientSession | FetcherInterface, *, accept: str = "application/json",
    follow_redirects: bool = False,
) -> FetcherInterface:
    """The seam over ``source``: a fetcher as it is (a lying or slow one in tests), a session
    wrapped in an ``AiohttpFetcher``."""
    if isinstance(source, FetcherInterface):
        return source
    return AiohttpFetcher(source, accept=accept, follow_redirects=follow_redirects)


@contextlib.asynccontextmanager
async def open_fetcher(limit_per_host: int = 4) -> AsyncIterator[AiohttpFetcher]:
    import aiohttp  # here, not at the top: most of `import verifier`'s time, needed online only

    connector = aiohttp.TCPConnector(limit=64, limit_per_host=limit_per_host)
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
        yield AiohttpFetcher(session)


# --- offline ---------------------------------------------------------------------------------


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_ATTESTATION_FILE_BYTES + 1)
    if len(data) > MAX_ATTESTATION_FILE_BYTES:
        raise ConfigError(f"{path} is over {MAX_ATTESTATION_FILE_BYTES} bytes")
    return data


def load_attestations(paths: Iterable[Path]) -> list[bytes]:
    """Envelope bytes from directories (searched recursively) or files.

    ``*.intoto.jsonl``: one envelope per line (blank lines skipped); ``*.json``: one envelope
    per file. Nothing is trusted yet: ``group_by_key`` and the decision check every one.
    """
    pool: list[bytes] = []
    for root in paths:
        if not root.exists():
            raise ConfigError(f"attestation path {root} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            try:
                if path.name.endswith(".intoto.jsonl"):
                    pool += [ln for ln in _read_capped(path).splitlines() if ln.strip()]
                elif path.name.endswith(".json"):
                    pool.append(_read_capped(path))
            except OSError as e:
                raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    return pool


def group_by_key(pool: Iterable[bytes], policy: Policy) -> tuple[dict[str, list[bytes]], list[str]]:
    """Attribute each envelope of a flat pool to the trusted rebuilder whose key verifies it.

    The keyid is only a hint: the hinted key is tried first, so the normal case costs one
    Ed25519 verification. Returns evidence for every trusted rebuilder (possibly empty) and a
    sentence for each envelope that was dropped (malformed, or no trusted key verifies it).
    The decision verifies every envelope again: it trusts nothing it did not check itself.
    """
    keys: dict[KeyId, Ed25519PublicKey] = {r.keyid: r.public_key for r in policy.rebuilders}
    owner = {r.keyid: r.id for r in policy.rebuilders}
    grouped: dict[str, list[bytes]] = {r.id: [] for r in policy.rebuilders}
    dropped: list[str] = []
    seen: set[bytes] = set()
    for raw in pool:
        if raw in seen:
            continue
        seen.add(raw)
        try:
            env = Envelope.from_bytes(raw)
            kid = env.verify_any(keys)
        except BadDataError as e:
            dropped.append(f"malformed envelope ignored ({e.reason})")
            continue
        except Exception as e:  # whatever one envelope holds, it is only dropped
            dropped.append(f"an unreadable envelope was ignored ({type(e).__name__})")
            continue
        if kid is None:
            dropped.append("an envelope verifies under no trusted key and was ignored")
            continue
        grouped[owner[kid]].append(raw)
    return grouped, dropped


def group_by_hint(pool: Iterable[bytes], policy: Policy) -> dict[str, list[bytes]]:
    """Attribute envelopes by their keyid hint, verifying only those without a trusted hint.

    For a large answer from a coordinator, where ``group_by_key`` would verify every envelope
    once to attribute it and the decision again to count it. The hint never decides: an
    envelope filed under a rebuilder whose key does not verify it is ignored by the decision as
    unusable. Only the attribution of an envelope whose hint lies can be lost, which a
    coordinator could achieve by withholding it anyway.
    """
    keys: dict[KeyId, Ed25519PublicKey] = {r.keyid: r.public_key for r in policy.rebuilders}
    owner = {r.keyid: r.id for r in policy.rebuilders}
    grouped: dict[str, list[bytes]] = {r.id: [] for r in policy.rebuilders}
    for raw in dict.fromkeys(pool):
        try:
            env = Envelope.from_bytes(raw)
        except BadDataError:
            continue
        kid = next((KeyId(s.keyid) for s in env.signatures if s.keyid in owner), None)
        if kid is None:
            kid = env.verify_any(keys)
        if kid is not None:
            grouped[owner[kid]].append(raw)
    return grouped


def check_offline(
    artifact: Artifact, policy: Policy, pool: Iterable[bytes], now: datetime
) -> QuorumResult:
    grouped, _ = group_by_key(pool, policy)
    return decide(artifact, policy, grouped, now)


# --- online ----------------------------------------------------------------------------------


def digest_url(base: str, artifact: Artifact) -> str:
    return f"{base.rstrip('/')}/v1/attestations?digest=sha256:{artifact.sha256}"


def package_url(base: str, artifact: Artifact) -> str:
    ident = artifact.identity  # its ecosystem names the collection (docs/api.md)
    return (
        f"{base.rstrip('/')}/v1/packages/{quote(ident.ecosystem, safe='')}/"
        f"{quote(ident.source, safe='')}/{quote(ident.source_version, safe='')}"
    )


def envelopes_in(body: bytes, url: str, config: ClientConfig) -> list[bytes]:
    """The ``attestations`` list of a response (api.md), each envelope re-serialized as bytes."""
    doc = strict_json_loads(body, "response")
    if not isinstance(doc, dict) or not isinstance(doc.get("attestations"), list):
        raise BadDataError("response", f"{url} did not answer with an attestations list")
    items = doc["attestations"]
    if len(items) > config.max_envelopes:
        raise BadDataError(
            "response", f"{url} sent {len(items)} attestations, limit {config.max_envelopes}"
        )
    # The signature covers the base64-decoded payload, so re-serializing the envelope is
    # lossless for verification; the decision parses these bytes strictly. A well-formed one
    # becomes its canonical bytes (its other fields are never looked at, however deep they
    # nest); a malformed one is passed on as it came, for the decision to say why it is unusable.
    return [_envelope_bytes(e) for e in items]


def _envelope_bytes(item: object) -> bytes:
    try:
        return Envelope.from_dict(item).to_bytes()
    except BadDataError:
        pass
    try:
        return json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError):
        return b'"an envelope nested too deeply to read"'  # refused by the decision as junk


class _NotFound:
    """A 404: the peer has nothing for this package or digest (or is not a rebuilder)."""


_NOT_FOUND = _NotFound()


async def _query(
    fetcher: FetcherInterface, url: str, config: ClientConfig
) -> list[bytes] | UnreachableError | BadDataError | _NotFound:
    try:
        body = await fetcher.fetch(url, max_bytes=config.max_response_bytes, timeout=config.timeout)
        return envelopes_in(body, url, config)
    except HTTPStatusError as e:
        if e.status == 404:
            return _NOT_FOUND
        return e
    except (UnreachableError, BadDataError) as e:
        return e


async def _is_a_rebuilder(fetcher: FetcherInterface, base_url: str, config: ClientConfig) -> bool:
    """Whether ``GET /v1/node`` answers like a node; only asked when both queries were 404."""
    url = f"{base_url.rstrip('/')}/v1/node"
    try:
        body = await fetcher.fetch(url, max_bytes=64 * 1024, timeout=config.timeout)
        doc = strict_json_loads(body, "response")
    except (UnreachableError, BadDataError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("id"), str)


async def ask(
    fetcher: FetcherInterface, base_url: str, artifact: Artifact, config: ClientConfig
) -> list[bytes] | Unreachable | BadResponse:
    """Both queries at once: by digest (agreements) and by package (disagreements too).

    The package query is required: it is the one that shows a mismatch this node reported, so
    an agreement seen without it could hide a disagreement and is not counted. A node answers
    both even when it has nothing; when both are 404 and so is ``/v1/node``, the URL does not
    point at a rebuilder, and the answer says so rather than "no attestation".
    """
    async with asyncio.TaskGroup() as tg:
        by_digest = tg.create_task(
            _query(fetcher, digest_url(base_url, artifact), config), name="query by digest"
        )
        by_package = tg.create_task(
            _query(fetcher, package_url(base_url, artifact), config), name="query by package"
        )
    digest_answer, package_answer = by_digest.result(), by_package.result()
    if (
        isinstance(digest_answer, _NotFound)
        and isinstance(package_answer, _NotFound)
        and not await _is_a_rebuilder(fetcher, base_url, config)
    ):
        return BadResponse(
            f"{NOT_A_REBUILDER}: {base_url} answers 404 to the attestation queries and to"
            " GET /v1/node; check this rebuilder's url in the policy"
        )
    if isinstance(digest_answer, _NotFound):
        digest_answer = []
    if isinstance(package_answer, _NotFound):
        package_answer = []
    if isinstance(package_answer, list):
        extra = digest_answer if isinstance(digest_answer, list) else []
        return package_answer + extra  # the decision verifies and counts duplicates once
    if isinstance(package_answer, BadDataError):
        return BadResponse(f"bad response to the package query: {package_answer.reason}")
    where = f"GET {urlsplit(package_answer.url).path}"
    if isinstance(digest_answer, list) and digest_answer:
        return Unreachable(
            f"{package_answer.reason} ({where}); its answer by digest is not counted without"
            " the package query, which is where a disagreement would show"
        )
    return Unreachable(f"{package_answer.reason} ({where})")


async def ask_until_settled(asks: Sequence[Coroutine[Any, Any, None]], settled: asyncio.Event,
                            grace: float) -> None:
    """Run the ``asks`` (one per rebuilder) until ``settled`` is set or all are done, then give
    the unfinished ones ``grace`` seconds more; cancel what is left. An ask's exception is
    raised (asks catch their peer's failures themselves)."""
    tasks = [asyncio.create_task(a) for a in asks]
    settled_wait: asyncio.Task[Any] = asyncio.create_task(settled.wait(), name="settled")
    try:
        while not settled.is_set() and not all(t.done() for t in tasks):
            running: list[asyncio.Task[Any]] = [t for t in tasks if not t.done()]
            await asyncio.wait([*running, settled_wait], return_when=asyncio.FIRST_COMPLETED)
        unfinished = [t for t in tasks if not t.done()]
        if unfinished:
            await asyncio.wait(unfinished, timeout=grace)
    finally:
        settled_wait.cancel()
        for t in tasks:
            t.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for o in outcomes:
        if isinstance(o, Exception):
            raise o


async def check_online(
    artifact: Artifact,
    policy: Policy,
    fetcher: FetcherInterface,
    now: datetime,
    config: ClientConfig | None = None,
) -> QuorumResult:
    """Ask every trusted rebuilder concurrently and wait for every answer, up to
    ``config.settle_grace`` seconds more once no answer can change the outcome (``is_settled``):
    the explanation is then complete and the same on every run whenever the rebuilders answer
    promptly, and one stalled rebuilder delays a settled decision by at most the grace. A
    rebuilder still silent then shows as not waited for, and the advice does not name it."""
    config = config or ClientConfig()
    results: dict[str, RebuilderResult] = {}
    pending: dict[str, TrustedRebuilder] = {}
    for r in policy.rebuilders:
        if r.keyid in policy.distrust.keyids:
            results[r.id] = assess(artifact, r, policy, [], now)  # never asked: never counted
        else:
            pending[r.id] = r
    settled = asyncio.Event()

    async def one(r: TrustedRebuilder) -> None:
        evidence: list[bytes] | Unreachable | BadResponse
        try:
            evidence = await ask(fetcher, r.base_url, artifact, config)
        except Exception as e:  # one source never fails the others (nor the TaskGroup)
            evidence = BadResponse(f"its answer could not be read ({type(e).__name__}: {e})")
        results[r.id] = assess(artifact, r, policy, evidence, now)
        del pending[r.id]
        if pending and is_settled(artifact, policy, results.values(), pending.values()):
            settled.set()

    if pending and not is_settled(artifact, policy, results.values(), pending.values()):
        await ask_until_settled([one(r) for r in list(pending.values())], settled,
                                config.settle_grace)
    ordered = [
        results.get(r.id)
        or RebuilderResult(r.id, r.operator, Status.NO_ATTESTATION, NOT_WAITED_FOR)
        for r in policy.rebuilders
    ]
    return conclude(artifact, policy, ordered)


async def check_via_coordinator(
    artifact: Artifact,
    policy: Policy,
    fetcher: FetcherInterface,
    coordinator_url: str,
    now: datetime,
    config: ClientConfig | None = None,
) -> QuorumResult:
    """One round trip to a coordinator, then the same checks as offline: it is a convenience,
    never a trust anchor (it can withhold attestations, never forge them)."""
    config = config or ClientConfig()
    answer: list[bytes] | Unreachable | BadResponse
    try:
        answer = await ask(fetcher, coordinator_url, artifact, config)
    except Exception as e:  # as for a rebuilder: an unusable answer, not a crash
        answer = BadResponse(f"its answer could not be read ({type(e).__name__}: {e})")
    if isinstance(answer, (Unreachable, BadResponse)):
        return _coordinator_failed(artifact, policy, coordinator_url, answer, now)
    return decide(artifact, policy, dict(group_by_key(answer, policy)[0]), now)


def _coordinator_failed(
    artifact: Artifact, policy: Policy, url: str, failure: Unreachable | BadResponse,
    now: datetime,
) -> QuorumResult:
    """A rejection whose reason is the coordinator, not the rebuilders it was asked about."""
    kind = type(failure)
    evidence = {r.id: kind(f"via coordinator: {failure.error}") for r in policy.rebuilders}
    result = decide(artifact, policy, evidence, now)
    what = "is unreachable" if isinstance(failure, Unreachable) else "gave an unusable answer"
    return dataclasses.replace(result, reasons=(
        f"The coordinator at {url} {what} ({failure.error}), so no rebuilder's attestations"
        " were seen. Check the URL and the network, or leave out --coordinator to ask the"
        " rebuilders directly.",
    ))


BATCH_SIZE = 500  # queries per POST, below the coordinator's 1000


def _batch_body(artifacts: Sequence[Artifact]) -> bytes:
    return json.dumps({"queries": [
        {"digest": f"sha256:{a.sha256}",
         "package": {"ecosystem": a.identity.ecosystem, "name": a.identity.source,
                     "version": a.identity.source_version}}
        for a in artifacts
    ]}, separators=(",", ":")).encode()


def _batch_answers(body: bytes, url: str, artifacts: Sequence[Artifact], config: ClientConfig
                   ) -> list[list[bytes]]:
    """Each artifact's envelopes, in order; ``BadDataError`` if the answer does not fit."""
    doc = strict_json_loads(body, "response")
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or len(results) != len(artifacts):
        raise BadDataError("response", f"{url} did not answer with one result per query")
    out = []
    for a, r in zip(artifacts, results, strict=True):
        if not isinstance(r, dict) or r.get("digest") != f"sha256:{a.sha256}":
            raise BadDataError("response", f"{url} answered another digest than asked")
        items = r.get("attestations")
        if not isinstance(items, list) or len(items) > config.max_envelopes:
            raise BadDataError("response", f"{url} sent a bad attestations list for"
                               f" sha256:{a.sha256[:16]}…")
        out.append([json.dumps(e, sort_keys=True, separators=(",", ":")).encode()
                    for e in items])
    return out


async def check_many_via_coordinator(
    artifacts: Sequence[Artifact],
    policy: Policy,
    fetcher: FetcherInterface,
    coordinator_url: str,
    now: datetime,
    config: ClientConfig | None = None,
) -> list[QuorumResult]:
    """Many artifacts in ``POST /v1/attestations:batch`` round trips, then the same checks as
    one at a time. A coordinator without the batch endpoint (404/405) is asked per artifact."""
    config = config or ClientConfig()
    url = f"{coordinator_url.rstrip('/')}/v1/attestations:batch"
    results: list[QuorumResult] = []
    for i in range(0, len(artifacts), BATCH_SIZE):
        chunk = artifacts[i:i + BATCH_SIZE]
        try:
            body = await fetcher.post(url, _batch_body(chunk),
                                      max_bytes=config.max_response_bytes * 4,
                                      timeout=config.timeout)
            answers: list[list[bytes]] | Unreachable | BadResponse = _batch_answers(
                body, url, chunk, config)
        except HTTPStatusError as e:
            if e.status in (404, 405):
                results += [await check_via_coordinator(a, policy, fetcher, coordinator_url,
                                                        now, config) for a in chunk]
                continue
            answers = Unreachable(e.reason)
        except UnreachableError as e:
            answers = Unreachable(e.reason)
        except BadDataError as e:
            answers = BadResponse(e.reason)
        for j, a in enumerate(chunk):
            if isinstance(answers, list):
                results.append(decide(a, policy, dict(group_by_hint(answers[j], policy)), now))
            else:
                results.append(_coordinator_failed(a, policy, coordinator_url, answers, now))
    return results
