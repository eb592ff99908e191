"""The commented ``config.toml`` that ``rebuilder init`` writes (every key of
docs/configuration.md, with the values given on the command line)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rebuilder.config import ConfigError, parse_listen
from verifier.tomlconf import toml_value

__all__ = ["render_config"]

# Every value goes through the TOML writer: a JSON string is not a TOML string (JSON escapes
# an emoji as a surrogate pair, which TOML refuses), and quotes, backslashes and newlines in
# an operator's name or a path must come back as they were given.
_toml_str = toml_value


def render_config(args: argparse.Namespace) -> str:
    host, port = parse_listen(args.listen, "--listen")
    state_dir = Path(args.dir).absolute()
    repos = []
    urls = args.repository_url or []
    suites = args.suite or []
    names = args.repository_name or []
    keyrings = getattr(args, "signed_by", None) or []
    if len(suites) > len(urls) or len(names) > len(urls) or len(keyrings) > len(urls):
        raise ConfigError("give one --repository-url per --suite/--repository-name/--signed-by")
    for i, url in enumerate(urls):
        suite = suites[i] if i < len(suites) else "stable"
        name = names[i] if i < len(names) else (f"repo{i + 1}" if len(urls) > 1 else "local")
        archs = ", ".join(_toml_str(a) for a in args.architectures.split(","))
        if i < len(keyrings):
            auth = f"signed_by = {_toml_str(keyrings[i])}   # keyring InRelease must verify under"
        elif getattr(args, "trusted", False):
            auth = ("trusted = true                        # UNSIGNED repository: whoever "
                    "controls the mirror controls what is rebuilt")
        else:
            auth = ('signed_by = "/usr/share/keyrings/debian-archive-keyring.gpg"'
                    "   # as APT's Signed-By")
        repos.append(f"""
[[repository]]
name = {_toml_str(name)}                # short name, used in logs and job rows
base_url = {_toml_str(url)}   # APT root (dists/, pool/)
suite = {_toml_str(suite)}
components = ["main"]
architectures = [{archs}]       # binary-<arch> indexes; "all": arch-indep builds
# placeholders (docs/configuration.md): {{base}} {{source}} {{version}} {{version_noepoch}}
# {{arch}} {{pool_prefix}}; an "all" job also tries each build architecture for {{arch}}
buildinfo_url = "{{base}}/buildinfo/{{source}}_{{version_noepoch}}_{{arch}}.buildinfo"
poll_interval = {_toml_str(args.poll_interval)}        # seconds between Release/Packages polls
{auth}
# uploader_keyring = "/usr/share/keyrings/debian-keyring.gpg"  # verify .dsc signatures
# require_signed_source = false       # true: an unsigned or unverifiable .dsc fails the build
max_index_entries = 200000            # per Packages/Sources index; more refuses the index
max_index_mb = 256                    # decompressed size per index
# mmdebstrap mode: suites pinned build dependencies come from, in order; without any, [build]
# mirror at this repository's suite. Add one table per suite, e.g.:
# [[repository.build_suite]]
# suite = "bookworm-security"
# mirror = "http://deb.debian.org/debian-security"
# components = ["main"]
# keyring = ""                        # apt signed-by keyring; "" = the chroot's default
""")
    if not repos:
        repos.append("""
# [[repository]]                      # add one table per APT repository to watch
# name = "local"
# base_url = "http://127.0.0.1:8400/debian"
# suite = "stable"
# components = ["main"]
# architectures = ["amd64", "all"]
# buildinfo_url = "{base}/buildinfo/{source}_{version_noepoch}_{arch}.buildinfo"
# poll_interval = 300
# signed_by = "/usr/share/keyrings/debian-archive-keyring.gpg"   # or: trusted = true (unsigned)
""")
    return f"""# repro-quorum rebuilder node configuration (docs/configuration.md).
# Relative paths are relative to the directory holding this file.

[node]
id = {_toml_str(args.id)}               # [a-z0-9][a-z0-9-]{{0,62}}; appears in MQTT topics
operator = {_toml_str(args.operator)}   # who runs this node; policies count distinct operators
listen = {_toml_str(f"{host}:{port}")}            # host:port of the public read-only HTTP API
# how others reach that API (report and log links use it):
public_url = {_toml_str(args.public_url.rstrip("/"))}
# Absolute, so this file can be moved (e.g. to /etc/repro-quorum/rebuilder/, read-only for
# the node's user) and still name the node's directory.
state_dir = {_toml_str(str(state_dir))}   # holds state.db, builds/, reports/, logs/, cache/
# PKCS#8 PEM, mode 0600; never mounted into a build:
signing_key = {_toml_str(str(state_dir / "keys" / "signing.pem"))}

[mqtt]
enabled = {"false" if args.no_mqtt else "true"}
host = {_toml_str(args.mqtt_host)}
port = {_toml_str(args.mqtt_port)}
tls = false
ca_file = ""                          # CA bundle when tls = true
username = ""
password_file = ""                    # file holding the password; never inline
keepalive = 30                        # seconds
{"".join(repos)}
[build]
environment = {_toml_str(args.environment)}                  # "host" or "mmdebstrap"
mirror = "http://deb.debian.org/debian"   # build suites' default mirror
snapshot_url = ""                     # snapshot.debian.org API for pins in no suite; "" = none
chroot_cache_mb = 20480               # cached chroots above this are evicted, least recently
                                      # used first (never one in use); 0 = no cap
timeout = 3600                        # seconds per build
max_disk_mb = 10240                   # build directory
max_output_mb = 2048                  # all produced files together
max_log_mb = 50
max_source_mb = 2048                  # fetched source files together
parallel = {_toml_str(args.parallel)}                          # builds at once
max_memory_mb = 8192                  # per build, no swap (cgroup memory.max)
max_processes = 4096                  # per build, threads included (cgroup pids.max)

[diffoscope]
enabled = true                        # write a report for every mismatching output
timeout = 600                         # seconds per report
max_report_mb = 20
"""
