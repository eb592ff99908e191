"""run_diffoscope for real, on small files: reports, exit codes, time and size caps."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebuilder.compare import diffoscope_version, run_diffoscope

pytestmark = pytest.mark.slow


def _pair(tmp_path: Path, same: bool = False) -> tuple[Path, Path]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "f.txt", tmp_path / "b" / "f.txt"
    a.write_text("line one\nbuild time 1717243200\n")
    b.write_text("line one\n" + ("build time 1717243200\n" if same else "build time 1999999999\n"))
    (tmp_path / "reports").mkdir()
    return a, b


async def test_differences_give_both_reports(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    html, txt = tmp_path / "reports" / "f.html", tmp_path / "reports" / "f.txt"
    result = await run_diffoscope(a, b, html, txt, time_limit=120, max_report_bytes=1 << 20)
    assert result.error is None
    assert result.differences
    assert result.html == html and result.text == txt
    assert "1999999999" in txt.read_text() and "1717243200" in txt.read_text()
    assert "<ins>999999999</ins>" in html.read_text()
    assert not list((tmp_path / "reports").glob(".diffoscope-*"))  # scratch removed
    assert (await diffoscope_version())[0].isdigit()


async def test_identical_files(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, same=True)
    reports = tmp_path / "reports"
    result = await run_diffoscope(a, b, reports / "f.html", reports / "f.txt", 120, 1 << 20)
    assert result.error is None and not result.differences
    assert result.html is None and result.text is None  # nothing to report


async def test_timeout(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    reports = tmp_path / "reports"
    result = await run_diffoscope(a, b, reports / "f.html", reports / "f.txt", 0.05, 1 << 20)
    assert result.error is not None and "did not finish" in result.error
    assert result.html is None and result.text is None


async def test_oversized_report_is_dropped(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    a.write_text("".join(f"line {i}\n" for i in range(20000)))
    b.write_text("".join(f"LINE {i}\n" for i in range(20000)))
    reports = tmp_path / "reports"
    result = await run_diffoscope(a, b, reports / "f.html", reports / "f.txt", 120, 4096)
    assert result.differences
    for p in (result.html, result.text):
        assert p is None or p.stat().st_size <= 4096
