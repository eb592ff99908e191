"""``rebuilder sync --config C --once``: one watcher round per repository, in the foreground.

Fetches and authenticates each repository's Release, reads its indexes exactly as the daemon's
watcher does (rebuilder.debian.watch), queues the source versions not known yet (nothing with
``--dry-run``) and prints, per repository, what is new, what is already known and what was
skipped and why. It never builds: an operator's dry run before ``rebuilder run``, and the handle
of benchmarks/bench_sync.py. Exit status 0 when every repository was read, 1 otherwise.
"""

from __future__ import annotations

import aiohttp

from rebuilder.config import Config
from rebuilder.db import Store
from rebuilder.debian.watch import RoundReport, Watcher
from rebuilder.outcome import BuildJob

__all__ = ["print_report", "sync_once"]


def _job_line(job: BuildJob) -> str:
    return f"{job.source} {job.version} {job.architecture} ({len(job.published)} binaries)"


def print_report(report: RoundReport, dry_run: bool, show: int) -> None:
    name = report.repository
    if report.release is not None:
        r = report.release
        print(f"repository {name}: {r.uri} sha256 {r.sha256[:16]}… Date {r.date}, "
              + (f"signed by {r.signer}" if r.signer else "UNSIGNED (trusted = true)"))
    if report.error is not None:
        print(f"repository {name}: REFUSED, previous state kept: {report.error}")
        return
    if report.unchanged:
        print(f"repository {name}: Release unchanged since the last round; nothing new")
        return
    verb = "would be queued" if dry_run else "queued"
    print(f"repository {name}: {report.binaries} binaries; {report.new_count} source versions "
          f"new ({verb}), {report.known_count} already known, {len(report.skipped)} skipped")
    for label, jobs, count in (("new", report.new, report.new_count),
                               ("known", report.known, report.known_count)):
        for job in jobs[:show]:
            print(f"  {label}: {_job_line(job)}")
        if count > min(show, len(jobs)):
            print(f"  {label}: … {count - min(show, len(jobs))} more (--show N lists up to "
                  f"{len(jobs)})")
    for what, why in report.skipped:
        print(f"  skipped: {what}: {why}")


async def sync_once(config: Config, dry_run: bool = False, show: int = 20) -> int:
    if not config.repositories:
        print("no [[repository]] configured: nothing to sync")
        return 0
    store = await Store.open(config.node.db_path)
    failed = 0
    try:
        async with aiohttp.ClientSession() as session:
            watcher = Watcher(config.repositories, store, session)
            try:
                for repo in config.repositories:
                    report = await watcher.round(repo, queue=not dry_run)
                    print_report(report, dry_run, show)
                    failed += report.error is not None
            finally:
                watcher.stop()
    finally:
        await store.close()
    return 1 if failed else 0
