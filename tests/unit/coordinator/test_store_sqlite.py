"""The coordinator's database: idempotent storing, indexes, disagreement detection, migrations."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from coordinator.checks import Accepted, check_envelope
from coordinator.store import SCHEMA_VERSION, Store, open_store
from tests.unit.coordinator.factory import Signer, sha
from verifier.dsse import Envelope
from verifier.keys import keyid

A = Signer("rb-alpha")
B = Signer("rb-beta")
DEB = "hello_1.0-1_amd64.deb"


def accepted(signer: Signer, env: Envelope) -> Accepted:
    pub = signer.key.public_key()
    r = check_envelope(env.to_bytes(), signer.id, pub, keyid(pub))
    assert isinstance(r, Accepted)
    return r


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = await open_store(tmp_path / "c.db")
    await s.ensure_rebuilders(["rb-alpha", "rb-beta"])
    yield s
    await s.close()


async def test_same_envelope_twice_is_one_row(store: Store) -> None:
    a = accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("h")}))
    r1 = await store.store_batch([a, a])
    r2 = await store.store_batch([a])
    assert (len(r1.stored), r1.duplicates) == (1, 1)
    assert (len(r2.stored), r2.duplicates) == (0, 1)
    assert (await store.totals()).envelopes == 1
    assert await store.envelopes_for_digest(sha("h")) == [a.body]
    assert (await store.counts()) == {"rb-alpha": {"reproduced": 1}}


async def test_lookup_by_digest_includes_revocations(store: Store) -> None:
    env = A.rebuild("hello", "1.0-1", {DEB: sha("h")})
    rev = A.revoke(env)
    other = B.rebuild("other", "2", {"other_2_amd64.deb": sha("o")})
    await store.store_batch([accepted(A, env), accepted(B, other)])
    await store.store_batch([accepted(A, rev)])
    bodies = await store.envelopes_for_digest(sha("h"))
    assert bodies == [env.to_bytes(), rev.to_bytes()]
    assert await store.envelopes_for_digest(sha("nothing")) == []
    results = await store.package_results("hello", "1.0-1")
    assert results[0].revoked is True


async def test_disagreement_between_rebuilders_recorded_once(store: Store) -> None:
    a = accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("h")}))
    b = accepted(B, B.rebuild("hello", "1.0-1", {DEB: sha("DIFFERENT")}, upstream={DEB: sha("h")}))
    first = await store.store_batch([a])
    assert first.new_disagreements == []
    second = await store.store_batch([b])
    assert len(second.new_disagreements) == 1
    d = second.new_disagreements[0]
    assert (d.source, d.version, d.artifact) == ("hello", "1.0-1", DEB)
    assert d.digests == {"rb-alpha": sha("h"), "rb-beta": sha("DIFFERENT")}
    # Another attestation for the same artifact does not record it again.
    b2 = accepted(B, B.rebuild("hello", "1.0-1", {DEB: sha("DIFFERENT")}, invocation="again"))
    third = await store.store_batch([b2])
    assert third.new_disagreements == []
    assert len(await store.disagreements()) == 1
    assert (await store.disagreements())[0].to_dict()["package"]["name"] == "hello"


async def test_one_rebuilder_signing_two_digests_is_a_disagreement(store: Store) -> None:
    a1 = accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("one")}, invocation="1"))
    a2 = accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("two")}, invocation="2"))
    result = await store.store_batch([a1, a2])
    assert len(result.new_disagreements) == 1
    assert {c["sha256"] for c in result.new_disagreements[0].conflicts} == {sha("one"), sha("two")}


async def test_agreement_is_not_a_disagreement(store: Store) -> None:
    a = accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("h")}))
    b = accepted(B, B.rebuild("hello", "1.0-1", {DEB: sha("h")}))
    assert (await store.store_batch([a, b])).new_disagreements == []
    found = await store.envelopes_for_digest(sha("h"))
    assert sorted(found) == sorted([a.body, b.body])


async def test_cursor_saved_with_the_page(store: Store) -> None:
    a = accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("h")}))
    assert await store.cursor("rb-alpha") == "0"
    await store.store_batch([a], cursor=("rb-alpha", "17"))
    assert await store.cursor("rb-alpha") == "17"
    states = await store.rebuilder_states()
    assert states["rb-alpha"].state == "online" and states["rb-alpha"].last_seen


async def test_search_and_package_views(store: Store) -> None:
    await store.store_batch(
        [
            accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("h")})),
            accepted(B, B.rebuild("hello", "1.0-1", {DEB: sha("x")}, upstream={DEB: sha("h")})),
            accepted(A, A.rebuild("world", "2", {"world_2_amd64.deb": sha("w")})),
        ]
    )
    found = await store.search_packages("hel", 10)
    assert [p.to_dict() for p in found] == [
        {"ecosystem": "debian", "source": "hello", "version": "1.0-1",
         "verdicts": {"rb-alpha": "reproduced", "rb-beta": "unreproducible"},
         "classes": {"rb-alpha": "reproduced", "rb-beta": "unreproducible"},
         "suites": ["stable"], "architectures": ["amd64"]}
    ]
    # LIKE wildcards in the query are literal characters.
    assert await store.search_packages("%", 10) == []
    assert len(await store.search_packages("", 10)) == 2


async def test_schema_version_and_refuses_newer(tmp_path: Path) -> None:
    s = await open_store(tmp_path / "c.db")
    await s.close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        await open_store(tmp_path / "c.db")


def test_disagreement_json_shape() -> None:
    from coordinator.store import Disagreement

    d = Disagreement(1, "hello", "1.0", DEB, {"rb-a": sha("a")}, [], 0.0)
    assert json.loads(json.dumps(d.to_dict()))["detected_at"] == "1970-01-01T00:00:00Z"


def _old_database(path: Path, version: int, items: list[Accepted]) -> None:
    """A database as a coordinator of schema ``version`` wrote it, holding ``items``."""
    from coordinator.store._schema import MIGRATIONS

    with sqlite3.connect(path) as db:
        for v in range(1, version + 1):
            db.executescript(MIGRATIONS[v - 1].sql)
        db.execute("INSERT INTO rebuilders(id) VALUES ('rb-alpha')")
        for i, a in enumerate(items, 1):
            db.execute(
                "INSERT INTO envelopes(id, digest, rebuilder, kind, source, version,"
                " architecture, verdict, invocation, failure, finished, received, body)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (i, bytes.fromhex(a.digest), a.rebuilder, a.kind, a.source, a.version,
                 a.architecture, a.verdict, a.invocation, a.failure, a.finished, 0.0, a.body),
            )
            for name, digest in a.subjects:
                db.execute(
                    "INSERT INTO subjects VALUES (?,?,?,?,?,?)",
                    (i, a.rebuilder, a.source, a.version, name, bytes.fromhex(digest)),
                )
            if a.revoked is not None:
                db.execute(
                    "INSERT INTO revocations VALUES (?,?,?,?)",
                    (i, a.rebuilder, bytes.fromhex(a.revoked), a.reason),
                )
            if a.verdict is not None:
                db.execute(
                    "INSERT INTO counts VALUES (?,?,1) ON CONFLICT DO UPDATE SET n = n + 1",
                    (a.rebuilder, a.verdict),
                )
        db.execute(f"PRAGMA user_version = {version}")


async def test_migration_from_version_1_fills_the_package_index(tmp_path: Path) -> None:
    _old_database(
        tmp_path / "c.db",
        1,
        [
            accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("h")})),
            accepted(A, A.rebuild("hello", "1.0-2", {DEB: sha("i")})),
        ],
    )
    s = await open_store(tmp_path / "c.db")
    try:
        found = await s.search_packages("hello", 10)
        assert [p.version for p in found] == ["1.0-2", "1.0-1"]
    finally:
        await s.close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7


def _back_to_version(db: sqlite3.Connection, version: int) -> None:
    """Undo the schema of the versions after ``version`` (their data stays as written)."""
    if version < 7:  # packages keyed by ecosystem
        for index in ("envelopes_package", "subjects_artifact"):
            db.execute(f"DROP INDEX {index}")
        for table in ("envelopes", "subjects"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN ecosystem")
        db.execute("CREATE INDEX envelopes_package ON envelopes(source, version)")
        db.execute("CREATE INDEX subjects_artifact ON subjects(source, version, name)")
        db.executescript("""
            CREATE TABLE packages_old (source TEXT NOT NULL, version TEXT NOT NULL,
                latest INTEGER NOT NULL, PRIMARY KEY (source, version)) WITHOUT ROWID;
            INSERT INTO packages_old SELECT source, version, latest FROM packages;
            DROP TABLE packages;
            ALTER TABLE packages_old RENAME TO packages;
            CREATE TABLE disagreements_old (id INTEGER PRIMARY KEY, source TEXT NOT NULL,
                version TEXT NOT NULL, artifact TEXT NOT NULL, digests TEXT NOT NULL,
                conflicts TEXT NOT NULL, detected_at REAL NOT NULL,
                UNIQUE (source, version, artifact));
            INSERT INTO disagreements_old SELECT id, source, version, artifact, digests,
                conflicts, detected_at FROM disagreements;
            DROP TABLE disagreements;
            ALTER TABLE disagreements_old RENAME TO disagreements;
        """)
    if version < 6:  # one envelope per statement
        for index in ("envelopes_statement", "envelopes_payload"):
            db.execute(f"DROP INDEX IF EXISTS {index}")
        db.execute("ALTER TABLE envelopes DROP COLUMN payload_digest")
        db.execute("ALTER TABLE revocations DROP COLUMN legacy")
    if version < 5:  # the log monitor's findings
        db.execute("DROP TABLE IF EXISTS log_inconsistencies")
    if version < 3:  # the dashboard's classes and history
        for index in ("envelopes_tampered", "envelopes_rebuilder"):
            db.execute(f"DROP INDEX {index}")
        for column in ("class", "suite"):
            db.execute(f"ALTER TABLE envelopes DROP COLUMN {column}")
        db.execute("DROP TABLE class_counts")
        db.execute("DROP TABLE status_history")
    db.execute(f"PRAGMA user_version = {version}")


async def test_migration_from_version_2_classes_stored_envelopes(tmp_path: Path) -> None:
    s = await open_store(tmp_path / "c.db")
    await s.ensure_rebuilders(["rb-alpha", "rb-beta"])
    good, bad = sha("h"), sha("evil")
    await s.store_batch([
        accepted(A, A.rebuild("hello", "1", {DEB: good})),
        accepted(B, B.rebuild("hello", "1", {DEB: sha("x")}, upstream={DEB: good})),
        # tampered: the rebuild matches the buildinfo, the repository serves other bytes
        accepted(A, A.rebuild("evil", "1", {DEB: good}, upstream={DEB: bad},
                              buildinfo={DEB: good})),
        accepted(B, B.failure("f", "1", "build: dpkg-buildpackage exited 2")),
        accepted(B, B.failure("g", "1", "fetch: buildinfo answered HTTP 404")),
    ])
    before = await s.class_counts()
    await s.close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        _back_to_version(db, 2)
    s = await open_store(tmp_path / "c.db")
    try:
        assert await s.class_counts() == before == {
            "rb-alpha": {"reproduced": 1, "tampered": 1},
            "rb-beta": {"unreproducible": 1, "failed": 1, "error": 1},
        }
        assert await s.tampered_packages() == [("evil", "1")]
    finally:
        await s.close()


async def test_tampered_revocation_history_and_filters(store: Store) -> None:
    good, bad = sha("h"), sha("evil")
    tampered = A.rebuild("evil", "1", {DEB: good}, upstream={DEB: bad}, buildinfo={DEB: good})
    await store.store_batch([
        accepted(A, tampered),
        accepted(B, B.rebuild("hello", "1", {DEB: good}, suite="unstable", arch="arm64")),
        accepted(B, B.rebuild("hello", "2", {DEB: good})),
    ])
    assert await store.tampered_packages() == [("evil", "1")]
    found = await store.search_packages("", 10, verdict="tampered")
    assert [(p.source, p.version) for p in found] == [("evil", "1")]
    found = await store.search_packages("", 10, suite="unstable")
    assert [(p.source, p.version) for p in found] == [("hello", "1")]
    found = await store.search_packages("", 10, architecture="arm64", suite="stable")
    assert found == []
    assert [v.version for v in await store.package_versions("hello")] == ["2", "1"]
    values = await store.filter_values()
    assert (values.suites, values.architectures) == (("stable", "unstable"), ("amd64", "arm64"))

    await store.store_batch([accepted(A, A.revoke(tampered, "wrong repository key"))])
    assert await store.tampered_packages() == []
    results = await store.package_results("evil", "1")
    assert results[0].revoked_reason == "wrong repository key"
    recent = await store.rebuilder_results("rb-alpha")
    assert recent[0].kind == "revocation" and recent[0].reason == "wrong repository key"
    assert recent[0].revokes == tampered.payload_digest()  # v2 names the statement
    assert recent[1].revoked_reason == "wrong repository key"
    assert await store.revocation_reasons([tampered.digest(), "00" * 32]) == {
        tampered.digest(): "wrong repository key"
    }

    await store.record_status("rb-beta", "online", {}, 100.0)
    await store.record_status("rb-beta", "online", {}, 150.0)  # no change: not repeated
    await store.record_status("rb-beta", "offline", {}, None)
    history = await store.status_history("rb-beta")
    assert [h.state for h in history] == ["offline", "online"]
    assert history[1].at == "1970-01-01T00:01:40Z"


async def test_cancelled_store_stays_cancelled(store: Store) -> None:
    """Cancelled at any point, even while its COMMIT runs, a batch ends cancelled (an error
    from the rollback instead would be caught and logged, and shutdown would wait forever)."""
    import asyncio
    import contextlib

    alpha = Signer("rb-alpha")
    await store.ensure_rebuilders(["rb-alpha"])
    for k in range(60):
        items = [
            accepted(alpha, alpha.rebuild(f"c{k}x{i}", "1", {f"c{k}x{i}.deb": sha(f"{k}{i}")}))
            for i in range(20)
        ]
        task = asyncio.create_task(store.store_batch(items))
        for _ in range(k):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # The writer still works, and every batch was stored whole or not at all.
    last = alpha.rebuild("z", "1", {"z_1_all.deb": sha("z")})
    result = await store.store_batch([accepted(alpha, last)])
    assert len(result.stored) == 1
    assert (await store.totals()).envelopes % 20 == 1


async def test_tampered_files_are_listed_until_revoked(store: Store) -> None:
    await store.ensure_rebuilders(["rb-alpha", "rb-beta"])
    built = {DEB: sha("built")}
    tampered = A.rebuild("hello", "1.0-1", built, upstream={DEB: sha("served")}, buildinfo=built)
    result = await store.store_batch(
        [
            accepted(A, tampered),
            accepted(B, B.rebuild("hello", "1.0-1", {DEB: sha("x")}, upstream={DEB: sha("h")})),
        ]
    )
    assert [a.verdict for a in result.stored] == ["tampered", "unreproducible"]
    assert [a.rebuilder for a in result.tampered] == ["rb-alpha"]
    (row,) = await store.tampered()
    assert row.rebuilder == "rb-alpha" and row.artifact == DEB
    assert (row.rebuilt, row.buildinfo, row.repository) == (
        sha("built"), sha("built"), sha("served"))
    assert await store.tampered("hello", "1.0-1") == [row]
    assert await store.tampered("hello", "9") == []
    await store.store_batch([accepted(A, A.revoke(tampered))])
    assert await store.tampered() == []


async def test_migration_to_version_4_reads_mismatch_as_unreproducible(tmp_path: Path) -> None:
    s = await open_store(tmp_path / "c.db")
    await s.ensure_rebuilders(["rb-alpha"])
    await s.store_batch([
        accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("x")}, upstream={DEB: sha("h")})),
        accepted(A, A.rebuild("hello", "1.0-2", {DEB: sha("y")}, upstream={DEB: sha("h")})),
    ])
    await s.close()
    with sqlite3.connect(tmp_path / "c.db") as db:  # as a version 3 database wrote them
        db.execute("UPDATE envelopes SET verdict = 'mismatch'")
        db.execute("UPDATE outputs SET verdict = 'mismatch'")
        db.execute("UPDATE counts SET verdict = 'mismatch'")
        db.execute("INSERT INTO counts VALUES ('rb-alpha', 'unreproducible', 1)")
        _back_to_version(db, 3)
    s = await open_store(tmp_path / "c.db")
    try:
        # migration 6 counts again from the envelopes themselves
        assert (await s.counts())["rb-alpha"] == {"unreproducible": 2}
        found = await s.search_packages("hello", 10)
        assert {p.verdicts["rb-alpha"] for p in found} == {"unreproducible"}
    finally:
        await s.close()
async def test_revoked_statements_leave_the_package_views_and_disagreements(store: Store) -> None:
    good = accepted(A, A.rebuild("hello", "1.0-1", {DEB: sha("good")}))
    bad_env = B.rebuild("hello", "1.0-1", {DEB: sha("evil")}, upstream={DEB: sha("good")})
    await store.store_batch([good, accepted(B, B.revoke(bad_env))])
    result = await store.store_batch([accepted(B, bad_env)])  # revoked before it arrived
    assert result.new_disagreements == []
    found = await store.search_packages("hello", 10)
    assert found[0].verdicts == {"rb-alpha": "reproduced"}


async def test_migration_from_version_6_keys_what_was_stored_as_debian(tmp_path: Path) -> None:
    """A database of schema 6 (before ecosystems): its packages, disagreements (ids kept) and
    the revocation of one of its envelopes are Debian's after the upgrade, and new envelopes
    of the same package meet the old ones."""
    s = await open_store(tmp_path / "c.db")
    await s.ensure_rebuilders(["rb-alpha", "rb-beta"])
    a = A.rebuild("hello", "1.0-1", {DEB: sha("h")})
    await s.store_batch([accepted(A, a), accepted(B, B.rebuild("hello", "1.0-1",
                                                               {DEB: sha("x")}))])
    (old,) = await s.disagreements()
    await s.close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        _back_to_version(db, 6)
        assert "ecosystem" not in {r[1] for r in db.execute("PRAGMA table_info(envelopes)")}
    s = await open_store(tmp_path / "c.db")
    try:
        (d,) = await s.disagreements()
        assert (d.id, d.ecosystem, d.digests) == (old.id, "debian", old.digests)
        assert d.to_dict()["package"] == {"ecosystem": "debian", "name": "hello",
                                          "version": "1.0-1"}
        assert [p.ecosystem for p in await s.package_versions("hello")] == ["debian"]
        assert await s.package_versions("hello", ecosystem="pypi") == []
        assert len(await s.envelopes_for_package("hello", "1.0-1")) == 2
        # stored after the upgrade: the same package, one more rebuilder's view of it
        c = Signer("rb-gamma")
        await s.ensure_rebuilders(["rb-gamma"])
        result = await s.store_batch([accepted(c, c.rebuild("hello", "1.0-1",
                                                            {DEB: sha("h")}))])
        assert [e.id for e in await s.envelopes_of("rb-gamma", 0, 1e12)] == [3]
        assert result.new_disagreements == []  # the known disagreement, updated
        (d,) = await s.disagreements()
        assert d.digests == {"rb-alpha": sha("h"), "rb-beta": sha("x"), "rb-gamma": sha("h")}
        await s.store_batch([accepted(A, A.revoke(a))])
        # the revocation (it names a statement, not a package) is not one of the results
        assert [r.revoked for r in await s.package_results("hello", "1.0-1")] == [
            True, False, False]
    finally:
        await s.close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7


async def test_ecosystems_are_kept_apart(store: Store) -> None:
    """The same name and version in two ecosystems are two packages: their digests never
    disagree with each other, and each ecosystem's queries see only its own."""
    deb = accepted(A, A.rebuild("hello", "1.0", {"hello-1.0.tar.gz": sha("d")}))
    other = dataclasses.replace(
        accepted(B, B.rebuild("hello", "1.0", {"hello-1.0.tar.gz": sha("p")})),
        ecosystem="pypi")
    result = await store.store_batch([deb, other])
    assert len(result.stored) == 2 and result.new_disagreements == []
    assert [b for b in await store.envelopes_for_package("hello", "1.0")] == [deb.body]
    assert await store.envelopes_for_package("hello", "1.0", ecosystem="pypi") == [other.body]
    found = await store.search_packages("hello", 10)
    assert sorted(p.ecosystem for p in found) == ["debian", "pypi"]
    assert [p.ecosystem for p in await store.search_packages("hello", 10,
                                                               ecosystem="pypi")] == ["pypi"]
    assert [r.rebuilder for r in await store.package_results("hello", "1.0",
                                                             ecosystem="pypi")] == ["rb-beta"]


async def test_batch_lookups_answer_what_the_single_lookups_answer(store: Store) -> None:
    """``envelopes_for_digests`` / ``envelopes_for_packages`` (the batch endpoint's) give, per
    key, exactly the single lookups' bodies in their order: envelopes, then revocations."""
    signed = A.rebuild("hello", "1.0-1", {DEB: sha("h")})
    a = accepted(A, signed)
    b = accepted(B, B.rebuild("hello", "1.0-1", {DEB: sha("h")}))
    c = accepted(A, A.rebuild("other", "2", {"other_2_all.deb": sha("o")}))
    other_eco = dataclasses.replace(
        accepted(B, B.rebuild("hello", "1.0-1", {"hello-1.0.tar.gz": sha("p")})),
        ecosystem="pypi")
    await store.store_batch([a, b, c, other_eco])
    await store.store_batch([accepted(A, A.revoke(signed))])
    digests = [sha("h"), sha("o"), sha("nothing"), sha("p")]
    packages = [("debian", "hello", "1.0-1"), ("debian", "other", "2"),
                ("pypi", "hello", "1.0-1"), ("debian", "absent", "1")]
    by_digest = await store.envelopes_for_digests(digests)
    by_package = await store.envelopes_for_packages(packages)
    for d in digests:
        assert by_digest[d] == await store.envelopes_for_digest(d), d
    for eco, name, version in packages:
        assert by_package[(eco, name, version)] == await store.envelopes_for_package(
            name, version, ecosystem=eco), (eco, name, version)
    assert len(by_digest[sha("h")]) == 3  # two attestations and the revocation of one
    assert by_digest[sha("nothing")] == [] and by_package[("debian", "absent", "1")] == []
