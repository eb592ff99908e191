"""Host environment comparison (pure) and the chroot cache key; plus the real dpkg database."""

from __future__ import annotations

from pathlib import Path

from rebuilder.debian.buildinfo import Dependency
from rebuilder.debian.environment import (
    chroot_key,
    compare_installed,
    host_architecture,
    host_differences,
    installed_packages,
)

INSTALLED = {
    "gcc-12": "12.2.0-14",
    "gcc-12:amd64": "12.2.0-14",
    "libc6": "2.36-9",
    "libc6:amd64": "2.36-9",
    "libc6:i386": "2.36-8",
    "tzdata": "2024a-0",
    "tzdata:all": "2024a-0",
}


def test_exact_match_has_no_differences() -> None:
    wanted = [Dependency("gcc-12", None, "12.2.0-14"), Dependency("libc6", "amd64", "2.36-9")]
    assert compare_installed(wanted, INSTALLED, "amd64") == []


def test_every_difference_is_listed() -> None:
    wanted = [
        Dependency("gcc-12", None, "12.2.0-13"),
        Dependency("missing", None, "1.0"),
        Dependency("libc6", "i386", "2.36-9"),
        Dependency("tzdata", None, "2024a-0"),
    ]
    assert compare_installed(wanted, INSTALLED, "amd64") == [
        "gcc-12 (= 12.2.0-13): installed 12.2.0-14",
        "missing (= 1.0): not installed",
        "libc6:i386 (= 2.36-9): installed 2.36-8",
    ]


def test_arch_qualified_lookup_does_not_fall_back() -> None:
    assert compare_installed([Dependency("tzdata", "arm64", "2024a-0")], INSTALLED, "amd64") == [
        "tzdata:arm64 (= 2024a-0): not installed"
    ]


def test_real_host_matches_its_own_dpkg_database() -> None:
    installed = installed_packages()
    arch = host_architecture()
    assert installed["dpkg"]
    wanted = [
        Dependency("dpkg", None, installed["dpkg"]),
        Dependency("dpkg", arch, installed["dpkg"]),
    ]
    assert host_differences(wanted) == []
    assert host_differences([Dependency("dpkg", None, "0.0-fake")]) == [
        f"dpkg (= 0.0-fake): installed {installed['dpkg']}"
    ]


def test_chroot_key_is_order_independent_and_sensitive() -> None:
    a = [Dependency("a", None, "1"), Dependency("b", None, "2")]
    key = chroot_key(a, "http://m/debian", "bookworm", "amd64")
    assert key == chroot_key(list(reversed(a)), "http://m/debian", "bookworm", "amd64")
    assert key != chroot_key([Dependency("a", None, "1")], "http://m/debian", "bookworm", "amd64")
    assert key != chroot_key(a, "http://other/debian", "bookworm", "amd64")
    assert key != chroot_key(a, "http://m/debian", "trixie", "amd64")
    assert len(key) == 64


def test_chroot_cache_evicts_least_recently_used_never_one_in_use(tmp_path: Path) -> None:
    import fcntl
    import os

    from rebuilder.debian.environment import evict_chroots

    for age, name in enumerate(["chroot-newest", "chroot-in-use", "chroot-old", "chroot-oldest"]):
        d = tmp_path / name
        d.mkdir()
        (d / ".repro-quorum-size").write_text(f"{100 * 2**20}\n")
        (d / ".repro-quorum-ready").write_text("k\n")
        os.utime(d / ".repro-quorum-ready", (1e9 - age * 100, 1e9 - age * 100))
    (tmp_path / "chroot-half").mkdir()  # no ready marker: being built, not counted
    with open(tmp_path / ".chroot-in-use.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # a build is using it
        removed = evict_chroots(tmp_path, 150 * 2**20, keep={"chroot-newest"})
    assert removed == ["chroot-oldest", "chroot-old"]
    assert sorted(p.name for p in tmp_path.glob("chroot-*")) == [
        "chroot-half", "chroot-in-use", "chroot-newest"]
    # under the cap: nothing to do
    assert evict_chroots(tmp_path, 10 * 2**30) == []


def test_the_delta_is_what_the_base_lacks_at_the_pinned_version() -> None:
    from rebuilder.debian.environment import delta_of

    wanted = [Dependency("libc6", None, "2.36-9"), Dependency("gcc-12", None, "12.2.0-15"),
              Dependency("help2man", None, "1.49.3"), Dependency("libc6", "amd64", "2.36-9")]
    assert delta_of(wanted, INSTALLED, "amd64") == [wanted[1], wanted[2]]
    assert delta_of([], INSTALLED, "amd64") == []


def _entry(cache: Path, name: str, mb: int, age: int, base: str | None = None) -> Path:
    import os

    d = cache / name
    d.mkdir()
    (d / ".repro-quorum-size").write_text(f"{mb * 2**20}\n")
    (d / ".repro-quorum-ready").write_text("k\n")
    if base is not None:
        (d / ".repro-quorum-base").write_text(base + "\n")
        (d / ".repro-quorum-layout").write_text("copy\n")
    os.utime(d / ".repro-quorum-ready", (1e9 - age * 100, 1e9 - age * 100))
    return d


def test_a_base_is_evicted_only_with_its_chroots_and_counts_as_used_when_they_are(
    tmp_path: Path,
) -> None:
    import fcntl
    import os

    from rebuilder.debian.environment import evict_chroots

    _entry(tmp_path, "base-old", 500, age=9)  # old, but its chroot is the newest entry
    _entry(tmp_path, "chroot-on-old", 10, age=0, base="base-old")
    _entry(tmp_path, "base-b", 500, age=5)
    _entry(tmp_path, "chroot-on-b", 10, age=6, base="base-b")
    _entry(tmp_path, "base-c", 500, age=3)
    _entry(tmp_path, "chroot-on-c", 10, age=4, base="base-c")
    packages = tmp_path / "packages" / "apt"
    packages.mkdir(parents=True)
    deb = packages / "make_4.3-4.1_amd64.deb"
    deb.write_bytes(b"x" * 8192)
    os.utime(deb, (1e9 - 2000, 1e9 - 2000))  # the least recently used of all
    with open(tmp_path / ".chroot-on-c.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # a build uses chroot-on-c: base-c stays too
        removed = evict_chroots(tmp_path, 1100 * 2**20)
    assert removed == ["make_4.3-4.1_amd64.deb", "chroot-on-b", "base-b"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "base-c", "base-old", "chroot-on-c", "chroot-on-old", "packages"]
    # a chroot may go alone; its base only with it
    assert evict_chroots(tmp_path, 600 * 2**20, keep={"base-old", "chroot-on-old"}) == [
        "chroot-on-c", "base-c"]
