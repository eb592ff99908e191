"""Debian as a node ecosystem: an APT repository watched, one source package rebuilt.

``DEBIAN_NODE`` is registered in ``rebuilder.ecosystem`` under ``debian``; the daemon asks it
for the watcher of the configured APT repositories (``rebuilder.debian.watch``) and for the
builder that runs one job (``rebuilder.debian.build.run_rebuild``, with the pins of the job's
repository's build suites and the buildinfo location re-resolved at every attempt)::

    builder = get("debian").builder(config, session)
    outcome = await builder(job, work_dir)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from rebuilder.config import Config, RepositoryConfig
from rebuilder.db import Store
from rebuilder.debian.locate import resolve_buildinfo
from rebuilder.ecosystem import NodeEcosystem, RepositoryWatcher, register
from rebuilder.outcome import BuildJob, RebuildOutcome
from rebuilder.queue import Builder

__all__ = ["DEBIAN_NODE", "DebianNode", "build_settings", "make_builder"]


class DebianNode(NodeEcosystem):
    name = "debian"

    def watcher(self, config: Config, repositories: tuple[RepositoryConfig, ...],
                store: Store, session: aiohttp.ClientSession,
                on_new_jobs: Callable[[list[BuildJob]], None] | None) -> RepositoryWatcher:
        from rebuilder.debian.watch import Watcher

        # the daemon's watcher: its index worker runs at idle priority, so that the API and the
        # publisher keep answering while a huge index is read (``sync --once`` does not use it)
        return Watcher(repositories, store, session, on_new_jobs=on_new_jobs, idle_reader=True)

    def builder(self, config: Config, session: aiohttp.ClientSession) -> Builder:
        return make_builder(config, session)


def make_builder(config: Config, session: aiohttp.ClientSession) -> Builder:
    """The Debian builder: ``rebuilder.debian.build.run_rebuild`` with the config's settings."""
    from rebuilder.debian.build import run_rebuild  # the pipeline; imported late, it is heavy
    from rebuilder.debian.pins import SuiteSource

    settings = build_settings(config)

    async def builder(job: BuildJob, work_dir: Path) -> RebuildOutcome:
        job = resolve_buildinfo(config, job)  # the current config's URLs, at every attempt
        repo = config.repository(job.repository)
        # pins come from the repository's build suites, else from [build] mirror at the
        # repository's suite (docs/configuration.md)
        suites = tuple(SuiteSource(s.mirror, s.suite, s.components, s.keyring)
                       for s in (repo.build_suites if repo else ()))
        if not suites and repo is not None:
            suites = (SuiteSource(config.build.mirror, repo.suite),)
        outcome: RebuildOutcome = await run_rebuild(
            job, replace(settings, suites=suites), work_dir, session)
        return outcome

    return builder


def build_settings(config: Config) -> Any:
    """The pipeline's ``BuildSettings`` from the [build] and [diffoscope] sections."""
    from rebuilder.debian.build import BuildSettings
    from rebuilder.openpgp import SourcePolicy

    b, d = config.build, config.diffoscope
    return BuildSettings.from_config(
        b, d,
        cache_dir=config.node.cache_dir,
        # Never visible inside a build: the state directory (database, other builds, reports),
        # the signing key and the broker password wherever they live.
        min_free_mb=config.node.min_free_mb,
        hidden_paths=tuple(p for p in (config.node.state_dir, config.node.signing_key,
                                       config.mqtt.password_file) if p is not None),
        source_policies={r.name: SourcePolicy(r.uploader_keyring, r.require_signed_source)
                         for r in config.repositories},
    )


DEBIAN_NODE = register(DebianNode())
