"""Where a job's buildinfo is: re-resolved from the current config at every attempt.

A job row keeps the URL it was queued with, but the config (``buildinfo_url``, architectures)
may have changed since, and a re-queued job must not keep a stale URL. So before each attempt
the job gets the config's candidates (``RepositoryConfig.buildinfo_candidates``), unless an
operator named the URL (``rebuilder rebuild --buildinfo URL``), which is used as given::

    job = resolve_buildinfo(config, job)
    job.buildinfo_url, job.buildinfo_candidates   # first to try, then the others
"""

from __future__ import annotations

from dataclasses import replace

from rebuilder.config import Config
from rebuilder.outcome import BuildJob

__all__ = ["resolve_buildinfo"]


def resolve_buildinfo(config: Config, job: BuildJob) -> BuildJob:
    if job.buildinfo_pinned:
        return replace(job, buildinfo_candidates=())
    repo = config.repository(job.repository)
    if repo is None:  # a repository no longer configured: the URL it was queued with
        return job
    first, *others = repo.buildinfo_candidates(job.source, job.version, job.architecture)
    return replace(job, buildinfo_url=first, buildinfo_candidates=tuple(others))
