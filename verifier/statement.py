"""in-toto Statement v1 with repro-quorum's predicates (ARCHITECTURE §4.2, §4.3).

Two statement kinds travel in DSSE envelopes:

- ``RebuildStatement``: a SLSA Provenance v1 predicate saying what one rebuilder produced from one
  buildinfo, with a verdict per output. Its subjects are what *this* rebuilder built; a failed
  build has no subject and a failure reason.
- ``RevocationStatement``: the rebuilder withdraws one of its attestations, named by the sha256 of
  the signed statement bytes (``Envelope.payload_digest()``, predicate ``revocation/v2``). An
  older ``revocation/v1`` names the envelope as the rebuilder published it
  (``Envelope.digest()`` of its one signature with the rebuilder's keyid); ``legacy`` is then
  true, and the decision matches it against the as-signed form of every envelope it verifies.

``parse_statement(payload)`` validates strictly and keeps the raw dict, so unknown fields
inside the signed payload survive a round trip and are otherwise ignored.

The parsed classes are plain (not frozen) slotted dataclasses: a frozen one pays an
``object.__setattr__`` call per field, a quarter of the parsing every verification does. Treat
them as read-only values; nothing here or in the decision mutates one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NewType

from verifier import ecosystem as ecosystems
from verifier.dsse import strict_json_loads
from verifier.errors import BadDataError
from verifier.verdicts import OUTPUT_VERDICTS, JobVerdict, OutputVerdictKind, job_verdict, read_v1

__all__ = [
    "PROVENANCE_PREDICATE_TYPE",
    "REVOCATION_PREDICATE_TYPE",
    "REVOCATION_V1_PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Digest",
    "OutputVerdict",
    "PackageIdentity",
    "RebuildStatement",
    "RevocationStatement",
    "Statement",
    "Subject",
    "VerdictKind",
    "format_time",
    "parse_statement",
    "parse_time",
    "validate_sha256",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PROVENANCE_PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
REVOCATION_PREDICATE_TYPE = "https://repro-quorum.dev/revocation/v2"  # names a payload sha256
REVOCATION_V1_PREDICATE_TYPE = "https://repro-quorum.dev/revocation/v1"  # names an envelope sha256
# The buildType is the ecosystem's (verifier.ecosystem; Debian's: debian-rebuild/v2, with
# per-file verdicts reproduced | unreproducible | tampered | missing-rebuild, subjects only for
# published files, unpublished rebuilt files as "unpublished:" byproducts, and no buildinfo
# digest when the buildinfo could not be fetched). An ecosystem's legacy build types are read
# in the v1 verdict words (verdicts.read_v1).

Digest = NewType("Digest", str)  # lowercase hex sha256

VerdictKind = OutputVerdictKind
_VERDICTS = OUTPUT_VERDICTS
_V1_VERDICTS = frozenset({"reproduced", "mismatch", "missing-upstream", "missing-rebuild"})

MAX_SUBJECTS = 1000
MAX_NAME = 255
MAX_TEXT = 4096
MAX_DEPENDENCIES = 10_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Subject, verdict and byproduct names: file names (the package identity's grammar is the
# ecosystem's, verifier.ecosystem).
_NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:_-]*")


# One validation path: every field is checked in ``__post_init__``, whoever builds the object.
# ``from_dict`` only walks the JSON to the values (checking the shape it must walk through) and
# builds through the constructor, so a statement a node can construct is one a verifier parses
# and the other way round; each field is still checked once.
_SURROGATE = re.compile("[\ud800-\udfff]")  # not Unicode text; refused in JSON too (dsse.py)


def _bad(reason: str) -> BadDataError:
    return BadDataError("statement", reason)


def validate_sha256(value: object, where: str) -> Digest:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _bad(f"{where} is not a lowercase hex sha256")
    return Digest(value)


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME or not _NAME_CHARS.fullmatch(value):
        raise _bad(f"{where} {value!r} is not a valid name")
    return value


def _text(value: object, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(f"{where} must be a string of at most {limit} characters")
    if not value.isascii() and _SURROGATE.search(value):
        raise _bad(f"{where} holds a lone surrogate, which is not text")
    return value


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be an object")
    return value


def _list(value: object, where: str, limit: int = MAX_SUBJECTS) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise _bad(f"{where} must be a list of at most {limit} items")
    return value


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and whole seconds."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031  # a third of strftime's cost
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )


def parse_time(value: object, where: str) -> datetime:
    value = _text(value, where, 64)
    try:
        t = datetime.fromisoformat(value)  # reads RFC 3339's "Z" since Python 3.11
    except ValueError as e:
        raise _bad(f"{where} {value!r} is not an RFC 3339 time") from e
    if t.tzinfo is None:
        raise _bad(f"{where} {value!r} has no time zone")
    if t.tzinfo is UTC:  # the usual "Z"
        return t
    try:
        return t.astimezone(UTC)  # compared and printed in UTC; year 1 at +01:00 cannot be
    except OverflowError as e:
        raise _bad(f"{where} {value!r} is out of range") from e


def _time(value: object, where: str) -> datetime:
    """A time given as a value: aware, and representable in UTC (it is written in UTC)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise _bad(f"{where} must be a datetime with a time zone")
    if value.tzinfo is not UTC:
        try:
            value.astimezone(UTC)
        except OverflowError as e:
            raise _bad(f"{where} {value.isoformat()} is out of range") from e
    return value


def _check_times(started: datetime, finished: datetime) -> None:
    if not (
        isinstance(started, datetime) and started.tzinfo is UTC
        and isinstance(finished, datetime) and finished.tzinfo is UTC
    ):  # the usual case (parsed times are UTC) is checked without the two calls
        _time(started, "startedOn")
        _time(finished, "finishedOn")
    if started > finished:
        raise _bad(
            f"startedOn {format_time(started)} is after finishedOn {format_time(finished)}"
        )


def _digest_raw(descriptor: object, where: str) -> Any:
    """``descriptor["digest"]["sha256"]`` as found; the constructor checks the value."""
    digest = _obj(descriptor, where).get("digest")
    if not isinstance(digest, dict):
        raise _bad(f"{where}.digest must be an object")
    return digest.get("sha256")


def _subject(o: object, where: str) -> Subject:
    """A ``{"name", "digest": {"sha256"}}`` descriptor as a ``Subject`` (which checks both)."""
    if not isinstance(o, dict):
        raise _bad(f"{where} must be an object")
    digest = o.get("digest")
    if not isinstance(digest, dict):
        raise _bad(f"{where}.digest must be an object")
    return Subject(o.get("name"), digest.get("sha256"))  # type: ignore[arg-type]  # checked there


def _opt_raw(o: object, where: str) -> Any:
    return None if o is None else _obj(o, where).get("sha256")


@dataclass(slots=True)
class PackageIdentity:
    """What was rebuilt: ecosystem, source name, source version, build architecture.

    The ecosystem must be a registered one, and name, version and architecture in its grammar
    (``Ecosystem.package_problem``)."""

    ecosystem: str
    name: str
    version: str
    architecture: str

    def __post_init__(self) -> None:
        try:
            eco = ecosystems.get(self.ecosystem)
        except ecosystems.UnknownEcosystem as e:
            raise _bad(str(e)) from None
        problem = eco.package_problem(self.name, self.version, self.architecture)
        if problem is not None:
            raise _bad(problem)

    @classmethod
    def from_dict(cls, d: object) -> PackageIdentity:
        o: Any = _obj(d, "package")  # values as found: the constructor checks them
        return cls(o.get("ecosystem"), o.get("name"), o.get("version"), o.get("architecture"))

    def to_dict(self) -> dict[str, str]:
        return {
            "ecosystem": self.ecosystem,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
        }

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.architecture})"


@dataclass(slots=True)
class Subject:
    name: str
    sha256: Digest

    def __post_init__(self) -> None:
        _name(self.name, "subject name")
        validate_sha256(self.sha256, "subject digest")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.sha256}}


@dataclass(slots=True)
class OutputVerdict:
    """The comparison of one output file with its published counterparts.

    ``rebuilt`` is what this rebuilder produced (None when the build did not produce the file),
    ``buildinfo`` and ``repository`` the digests it was compared with (None when absent).
    """

    name: str
    verdict: VerdictKind
    rebuilt: Digest | None = None
    buildinfo: Digest | None = None
    repository: Digest | None = None
    report_sha256: Digest | None = None
    report_url: str | None = None

    def __post_init__(self) -> None:
        _name(self.name, "verdict name")
        if not isinstance(self.verdict, str) or self.verdict not in _VERDICTS:
            raise _bad(f"verdict {self.verdict!r} is not one of {sorted(_VERDICTS)}")
        if self.rebuilt is not None:
            validate_sha256(self.rebuilt, "verdict rebuilt")
        if self.buildinfo is not None:
            validate_sha256(self.buildinfo, "verdict buildinfo")
        if self.repository is not None:
            validate_sha256(self.repository, "verdict repository")
        if self.report_sha256 is not None:
            validate_sha256(self.report_sha256, "verdict report_sha256")
        if self.report_url is not None:
            _text(self.report_url, "report url", 2048)

    def to_dict(self) -> dict[str, Any]:
        annotations: dict[str, Any] = {"verdict": self.verdict}
        if self.buildinfo:
            annotations["buildinfo"] = {"sha256": self.buildinfo}
        if self.repository:
            annotations["repository"] = {"sha256": self.repository}
        if self.report_sha256 or self.report_url:
            report: dict[str, Any] = {}
            if self.report_url:
                report["uri"] = self.report_url
            if self.report_sha256:
                report["digest"] = {"sha256": self.report_sha256}
            annotations["report"] = report
        d: dict[str, Any] = {"name": f"verdict:{self.name}", "annotations": annotations}
        if self.rebuilt:
            d["digest"] = {"sha256": self.rebuilt}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], v1: bool = False) -> OutputVerdict | None:
        """One ``verdict:`` byproduct; with ``v1`` in the old words (None: a v1 entry for an
        unpublished file, which is no verdict today)."""
        name = _text(d.get("name"), "byproduct name", MAX_NAME + 8).removeprefix("verdict:")
        ann: Any = _obj(d.get("annotations"), "verdict annotations")
        verdict = ann.get("verdict")
        if v1:
            if not isinstance(verdict, str) or verdict not in _V1_VERDICTS:
                raise _bad(f"verdict {verdict!r} is not one of {sorted(_V1_VERDICTS)}")
            verdict = read_v1(verdict)
            if verdict is None:
                return None
        report_url = report_sha256 = None
        report = ann.get("report")
        if report is not None:
            r = _obj(report, "verdict report")
            report_url = r.get("uri")
            if "digest" in r:
                report_sha256 = _digest_raw(r, "verdict report")
        return cls(  # positional: a keyword call costs more, on every verification
            name,
            verdict,
            _digest_raw(d, "verdict") if "digest" in d else None,
            _opt_raw(ann.get("buildinfo"), "verdict buildinfo"),
            _opt_raw(ann.get("repository"), "verdict repository"),
            report_sha256,
            report_url,
        )


@dataclass(slots=True)
class RebuildStatement:
    """One rebuild by one rebuilder. Construct with keyword arguments; ``to_bytes`` to sign."""

    package: PackageIdentity
    subjects: tuple[Subject, ...]
    builder_id: str
    started_on: datetime
    finished_on: datetime
    invocation_id: str
    buildinfo_uri: str
    buildinfo_sha256: Digest | None  # None only for a failure: the buildinfo was not fetched
    repository: str
    verdicts: tuple[OutputVerdict, ...] = ()
    failure: str | None = None  # set iff the build failed; then subjects is empty
    builder_version: str = ""
    internal_parameters: Mapping[str, Any] = field(default_factory=dict)
    resolved_dependencies: Sequence[Mapping[str, Any]] = ()
    raw: Mapping[str, Any] | None = field(default=None, compare=False)
    # rebuilt files the repository does not publish: recorded, never subjects (v2)
    unpublished: tuple[Subject, ...] = ()

    def __post_init__(self) -> None:
        # Every field, for a statement built by a node or parsed by a verifier alike.
        if not isinstance(self.package, PackageIdentity):
            raise _bad("package must be a PackageIdentity")
        if len(self.subjects) > MAX_SUBJECTS:
            raise _bad(f"{len(self.subjects)} subjects, limit {MAX_SUBJECTS}")
        for s in self.subjects:
            if not isinstance(s, Subject):
                raise _bad("subjects must be Subject values")
        if len(self.verdicts) > 2 * MAX_SUBJECTS:
            raise _bad(f"{len(self.verdicts)} verdicts, limit {2 * MAX_SUBJECTS}")
        for v in self.verdicts:
            if not isinstance(v, OutputVerdict):
                raise _bad("verdicts must be OutputVerdict values")
        if self.failure is not None:
            _text(self.failure, "failure reason")
            if self.subjects:
                raise _bad("a failed build must have no subject")
        elif not self.subjects:
            raise _bad("no subject and no failure reason")
        _text(self.builder_id, "builder id", 2048)
        _text(self.builder_version, "version", 64)
        _text(self.invocation_id, "invocationId", 256)
        _text(self.buildinfo_uri, "buildinfo uri", 2048)
        if self.buildinfo_sha256 is not None:
            validate_sha256(self.buildinfo_sha256, "buildinfo digest")
        elif self.failure is None:
            raise _bad("only a failed build may lack a buildinfo digest")
        if len(self.unpublished) > MAX_SUBJECTS:
            raise _bad(f"{len(self.unpublished)} unpublished files, limit {MAX_SUBJECTS}")
        for u in self.unpublished:
            if not isinstance(u, Subject):
                raise _bad("unpublished files must be Subject values")
        _text(self.repository, "repository", 2048)
        _check_times(self.started_on, self.finished_on)
        if not isinstance(self.internal_parameters, (dict, Mapping)):  # dict: the fast path
            raise _bad("internalParameters must be an object")
        if len(self.resolved_dependencies) > MAX_DEPENDENCIES:
            raise _bad(f"resolvedDependencies must be a list of at most {MAX_DEPENDENCIES} items")
        for o in self.resolved_dependencies:
            if not isinstance(o, (dict, Mapping)):
                raise _bad("dependency must be an object")

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def verdict(self) -> JobVerdict:
        """The job's class: failed, tampered, unreproducible or reproduced (verdicts.py)."""
        return job_verdict((v.verdict for v in self.verdicts), self.failed)

    def subject_named(self, name: str) -> Subject | None:
        for s in self.subjects:
            if s.name == name:
                return s
        return None

    def verdict_for(self, name: str) -> OutputVerdict | None:
        for v in self.verdicts:
            if v.name == name:
                return v
        return None

    def to_dict(self) -> dict[str, Any]:
        byproducts: list[dict[str, Any]] = [v.to_dict() for v in self.verdicts]
        byproducts += [
            {"name": f"unpublished:{u.name}", "digest": {"sha256": u.sha256}}
            for u in self.unpublished
        ]
        if self.failure is not None:
            byproducts.append({"name": "failure", "annotations": {"reason": self.failure}})
        return {
            "_type": STATEMENT_TYPE,
            "subject": [s.to_dict() for s in self.subjects],
            "predicateType": PROVENANCE_PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": ecosystems.get(self.package.ecosystem).build_type,
                    "externalParameters": {
                        "package": self.package.to_dict(),
                        "buildinfo": (
                            {"uri": self.buildinfo_uri}
                            if self.buildinfo_sha256 is None
                            else {
                                "uri": self.buildinfo_uri,
                                "digest": {"sha256": self.buildinfo_sha256},
                            }
                        ),
                        "repository": self.repository,
                    },
                    "internalParameters": dict(self.internal_parameters),
                    "resolvedDependencies": [dict(d) for d in self.resolved_dependencies],
                },
                "runDetails": {
                    "builder": {
                        "id": self.builder_id,
                        "version": {"repro-quorum": self.builder_version},
                    },
                    "metadata": {
                        "invocationId": self.invocation_id,
                        "startedOn": format_time(self.started_on),
                        "finishedOn": format_time(self.finished_on),
                    },
                    "byproducts": byproducts,
                },
            },
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RebuildStatement:
        # Walk to the values; the constructors (Subject, OutputVerdict, this one) check them.
        pred = _obj(d.get("predicate"), "predicate")
        bdef: Any = _obj(pred.get("buildDefinition"), "buildDefinition")
        try:
            eco, v1 = ecosystems.by_build_type(bdef.get("buildType"))
        except ecosystems.UnknownEcosystem as e:
            raise _bad(str(e)) from None
        ext: Any = _obj(bdef.get("externalParameters"), "externalParameters")
        run = _obj(pred.get("runDetails"), "runDetails")
        builder: Any = _obj(run.get("builder"), "runDetails.builder")
        meta: Any = _obj(run.get("metadata"), "runDetails.metadata")

        subjects = tuple([_subject(o, "subject") for o in _list(d.get("subject"), "subject")])

        verdicts: list[OutputVerdict] = []
        unpublished: list[Subject] = []
        failure: str | None = None
        for bp in _list(run.get("byproducts", []), "byproducts", 3 * MAX_SUBJECTS + 1):
            o = _obj(bp, "byproduct")
            bp_name = o.get("name")
            if isinstance(bp_name, str) and bp_name.startswith("verdict:"):
                verdict = OutputVerdict.from_dict(o, v1)
                if verdict is not None:
                    verdicts.append(verdict)
            elif isinstance(bp_name, str) and bp_name.startswith("unpublished:") and not v1:
                unpublished.append(Subject(bp_name.removeprefix("unpublished:"),
                                           _digest_raw(o, "unpublished file")))
            elif bp_name == "failure":
                failure = _obj(o.get("annotations"), "failure annotations").get("reason")
                if failure is None:
                    raise _bad("failure reason must be a string of at most 4096 characters")
            # other byproducts are kept in raw and ignored

        deps = _list(bdef.get("resolvedDependencies", []), "resolvedDependencies", MAX_DEPENDENCIES)
        binfo: Any = _obj(ext.get("buildinfo"), "buildinfo")
        version = _obj(builder.get("version", {}), "builder version")
        package = PackageIdentity.from_dict(ext.get("package"))
        if package.ecosystem != eco.name:
            raise _bad(f"package ecosystem {package.ecosystem!r} is not that of buildType"
                       f" {eco.build_type} ({eco.name!r})")
        return cls(  # positional, in field order: a keyword call costs more
            package,
            subjects,
            builder.get("id"),
            parse_time(meta.get("startedOn"), "startedOn"),
            parse_time(meta.get("finishedOn"), "finishedOn"),
            meta.get("invocationId"),
            binfo.get("uri"),
            # a v2 failure before the buildinfo was fetched names no digest
            _digest_raw(binfo, "buildinfo") if "digest" in binfo or failure is None or v1
            else None,
            ext.get("repository"),
            tuple(verdicts),
            failure,
            version.get("repro-quorum", ""),
            _obj(bdef.get("internalParameters", {}), "internalParameters"),
            tuple(deps),
            d,
            tuple(unpublished),
        )


@dataclass(slots=True)
class RevocationStatement:
    """A rebuilder withdraws one of its attestations.

    ``revoked`` is the sha256 of the revoked statement's payload bytes (v2), or, when
    ``legacy`` is true (a v1 revocation), the sha256 of the revoked envelope as it was signed.
    """

    revoked: Digest
    reason: str
    builder_id: str
    revoked_on: datetime
    legacy: bool = False
    raw: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate_sha256(self.revoked, "revoked statement digest")
        _text(self.reason, "revocation reason")
        _text(self.builder_id, "builder id", 2048)
        _time(self.revoked_on, "revokedOn")

    def to_dict(self) -> dict[str, Any]:
        subject = "attestation" if self.legacy else "statement"
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": subject, "digest": {"sha256": self.revoked}}],
            "predicateType": (
                REVOCATION_V1_PREDICATE_TYPE if self.legacy else REVOCATION_PREDICATE_TYPE
            ),
            "predicate": {
                "reason": self.reason,
                "builder": {"id": self.builder_id},
                "revokedOn": format_time(self.revoked_on),
            },
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_dict(cls, d: dict[str, Any], legacy: bool = False) -> RevocationStatement:
        subjects = _list(d.get("subject"), "subject")
        if len(subjects) != 1:
            raise BadDataError("statement", "a revocation names exactly one attestation")
        pred: Any = _obj(d.get("predicate"), "predicate")
        builder: Any = _obj(pred.get("builder"), "builder")
        return cls(
            revoked=_digest_raw(subjects[0], "subject"),
            reason=pred.get("reason"),
            builder_id=builder.get("id"),
            revoked_on=parse_time(pred.get("revokedOn"), "revokedOn"),
            legacy=legacy,
            raw=d,
        )


Statement = RebuildStatement | RevocationStatement


def parse_statement(payload: bytes) -> Statement:
    """Parse a verified envelope's payload. Call only after the signature has verified."""
    d = _obj(strict_json_loads(payload, "statement"), "statement")
    if d.get("_type") != STATEMENT_TYPE:
        raise BadDataError("statement", f"_type {d.get('_type')!r}, expected {STATEMENT_TYPE}")
    ptype = d.get("predicateType")
    if ptype == PROVENANCE_PREDICATE_TYPE:
        return RebuildStatement.from_dict(d)
    if ptype == REVOCATION_PREDICATE_TYPE:
        return RevocationStatement.from_dict(d)
    if ptype == REVOCATION_V1_PREDICATE_TYPE:
        return RevocationStatement.from_dict(d, legacy=True)
    raise BadDataError("statement", f"predicateType {ptype!r} is not one repro-quorum knows")
