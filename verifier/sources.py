"""Where attestations come from: files, each trusted rebuilder, or a coordinator.

Nothing here decides anything; it gathers envelope bytes for ``verifier.decision``. The network
sits behind one small seam, ``FetcherInterface`` (one method to implement, like python-tuf's):
its public ``fetch`` enforces a response size cap and a per-request timeout and turns every
failure into ``UnreachableError`` or ``BadDataError``. ``AiohttpFetcher`` is the production one::

    async with open_fetcher() as fetcher:
        result = await check_online(artifact, policy, fetcher, now=datetime.now(UTC))
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from verifier.decision import (
    Artifact,
    BadResponse,
    QuorumResult,
    RebuilderResult,
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

if TYPE_CHECKING:  # aiohttp is imported on first use: `import verifier` stays light (offline)
    import aiohttp

__all__ = [
    "AiohttpFetcher",
    "ClientConfig",
    "FetcherInterface",
    "check_offline",
    "check_online",
    "check_via_coordinator",
    "group_by_key",
    "load_attestations",
    "open_fetcher",
]

MAX_ATTESTATION_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Limits for online queries; every number is a bound on what a peer can make us do."""

    timeout: float = 10.0  # seconds for one request, connection to last byte
    max_response_bytes: int = 16 * 1024 * 1024
    max_envelopes: int = 1000  # per response

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= 600:
            raise ConfigError(f"client timeout {self.timeout} must be in (0, 600] seconds")
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
        buf = bytearray()
        try:
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(self._fetch(url)) as chunks:
                    async for chunk in chunks:
                        buf += chunk
                        if len(buf) > max_bytes:
                            raise BadDataError(
                                "response", f"{url} sent more than the {max_bytes}-byte limit"
                            )
        except (BadDataError, UnreachableError):
            raise
        except TimeoutError as e:
            raise UnreachableError(url, f"no complete answer within {timeout:g}s") from e
        except Exception as e:  # the seam's promise: one error family, whatever broke
            raise UnreachableError(url, f"{type(e).__name__}: {e}".rstrip(": ")) from e
        return bytes(buf)


class AiohttpFetcher(FetcherInterface):
    """The production fetcher over one shared ``aiohttp.ClientSession``. No redirects."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def _fetch(self, url: str) -> AsyncGenerator[bytes, None]:
        async with self._session.get(
            url, allow_redirects=False, headers={"Accept": "application/json"}
        ) as resp:
            if resp.status != 200:
                raise HTTPStatusError(url, resp.status)
            async for chunk in resp.content.iter_chunked(64 * 1024):
                yield chunk


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


def check_offline(
    artifact: Artifact, policy: Policy, pool: Iterable[bytes], now: datetime
) -> QuorumResult:
    grouped, _ = group_by_key(pool, policy)
    return decide(artifact, policy, grouped, now)


# --- online ----------------------------------------------------------------------------------


def digest_url(base: str, artifact: Artifact) -> str:
    return f"{base.rstrip('/')}/v1/attestations?digest=sha256:{artifact.sha256}"


def package_url(base: str, artifact: Artifact) -> str:
    ident = artifact.identity
    return (
        f"{base.rstrip('/')}/v1/packages/debian/"
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


async def _query(
    fetcher: FetcherInterface, url: str, config: ClientConfig
) -> list[bytes] | UnreachableError | BadDataError:
    try:
        body = await fetcher.fetch(url, max_bytes=config.max_response_bytes, timeout=config.timeout)
        return envelopes_in(body, url, config)
    except HTTPStatusError as e:
        if e.status == 404:
            return []  # the peer has nothing for this package or digest
        return e
    except (UnreachableError, BadDataError) as e:
        return e


async def ask(
    fetcher: FetcherInterface, base_url: str, artifact: Artifact, config: ClientConfig
) -> list[bytes] | Unreachable | BadResponse:
    """Both queries at once: by digest (agreements) and by package (disagreements too).

    The package query is required: it is the one that shows a mismatch this node reported, so
    an agreement seen without it could hide a disagreement and is not counted.
    """
    async with asyncio.TaskGroup() as tg:
        by_digest = tg.create_task(
            _query(fetcher, digest_url(base_url, artifact), config), name="query by digest"
        )
        by_package = tg.create_task(
            _query(fetcher, package_url(base_url, artifact), config), name="query by package"
        )
    digest_answer, package_answer = by_digest.result(), by_package.result()
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


async def check_online(
    artifact: Artifact,
    policy: Policy,
    fetcher: FetcherInterface,
    now: datetime,
    config: ClientConfig | None = None,
) -> QuorumResult:
    """Ask every trusted rebuilder concurrently; stop as soon as no answer can change the
    outcome (``is_settled``). Rebuilders not yet answered then show as not queried."""
    config = config or ClientConfig()
    results: dict[str, RebuilderResult] = {}
    pending: dict[str, TrustedRebuilder] = {}
    for r in policy.rebuilders:
        if r.keyid in policy.distrust.keyids:
            results[r.id] = assess(artifact, r, policy, [], now)  # never asked: never counted
        else:
            pending[r.id] = r
    tasks: list[asyncio.Task[None]] = []

    async def one(r: TrustedRebuilder) -> None:
        evidence: list[bytes] | Unreachable | BadResponse
        try:
            evidence = await ask(fetcher, r.base_url, artifact, config)
        except Exception as e:  # one source never fails the others (nor the TaskGroup)
            evidence = BadResponse(f"its answer could not be read ({type(e).__name__}: {e})")
        results[r.id] = assess(artifact, r, policy, evidence, now)
        del pending[r.id]
        if pending and is_settled(artifact, policy, results.values(), pending.values()):
            me = asyncio.current_task()
            for t in tasks:
                if t is not me:
                    t.cancel()  # its rebuilder then shows as "not queried"

    if pending and not is_settled(artifact, policy, results.values(), pending.values()):
        async with asyncio.TaskGroup() as tg:
            for r in list(pending.values()):
                tasks.append(tg.create_task(one(r), name=f"ask {r.id}"))
    ordered = [
        results.get(r.id) or assess(artifact, r, policy, None, now) for r in policy.rebuilders
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
    evidence: dict[str, Sequence[bytes] | Unreachable | BadResponse]
    if isinstance(answer, (Unreachable, BadResponse)):
        kind = type(answer)
        evidence = {r.id: kind(f"via coordinator: {answer.error}") for r in policy.rebuilders}
    else:
        evidence = dict(group_by_key(answer, policy)[0])
    return decide(artifact, policy, evidence, now)
