"""``make demo``: a whole rebuilder network on this machine, from nothing, in a few minutes.

1. builds a local APT repository (``rqdemo.testrepo``: reproducible packages, one that is
   not reproducible, one tampered with after its build; its InRelease signed with a generated
   key) and serves it; the nodes verify that signature (``signed_by``) before reading an index;
2. starts a real mosquitto on a free port, three rebuilder nodes of three operators (each with
   its own key, database and port) and the coordinator;
3. waits, showing progress, until every node has handled every package;
4. writes a 2-of-3 verifier policy and runs ``verifier check`` on every published .deb, then
   prints one table: package, verdict, agreeing rebuilders, and for a rejected one the reason
   and the diffoscope report;
5. prints the dashboard URL and runs until Ctrl-C (``--once``: exits after step 4 with 0 when
   every verdict is the expected one, 1 otherwise).

State goes into a temporary directory (or ``--state DIR``); every child process is stopped on
exit, on SIGTERM, and (the kernel's parent-death signal) even when the demo itself is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from rqdemo.broker import COORDINATOR_USER, BrokerFiles, write_broker_files
from verifier.errors import VerifierError
from verifier.keys import load_private_key, public_key_pem
from verifier.tomlconf import read_toml, write_toml

__all__ = ["main"]

NODES = (
    ("rb-alpha", "Alpha University"),
    ("rb-beta", "Beta Foundation"),
    ("rb-gamma", "Gamma Systems"),
)
WAIT_LIMIT = 900.0  # seconds for every node to handle every package
EXPECTED = {"reproducible": True, "unreproducible": False, "tampered": False}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Out:
    """Progress for humans: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""
        self._last_time = 0.0

    def step(self, text: str) -> None:
        self.end_progress()
        print(f"==> {text}", file=self.stream, flush=True)

    def info(self, text: str) -> None:
        self.end_progress()
        print(f"    {text}", file=self.stream, flush=True)

    def progress(self, text: str) -> None:
        if self.tty:
            print(f"\r    {text}\033[K", end="", file=self.stream, flush=True)
            self._last = text
        elif text != self._last and time.monotonic() - self._last_time > 5:
            print(f"    {text}", file=self.stream, flush=True)
            self._last = text
            self._last_time = time.monotonic()

    def end_progress(self) -> None:
        if self.tty and self._last:
            print(file=self.stream, flush=True)
        self._last = ""


@dataclass
class Children:
    """Child processes, each in its own process group, all stopped on exit."""

    log_dir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _watchdog: subprocess.Popen[bytes] | None = None

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> Path:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as f:
            proc = subprocess.Popen(
                list(argv),
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,  # its own group: stopping it stops its children too
            )
        self.procs.append((name, proc))
        self._watch(f"{proc.pid}\n")
        return log

    def _watch(self, line: str) -> None:
        """Tell the watchdog about a process group ("clear": all were stopped)."""
        if self._watchdog is None:
            # A separate process that outlives a killed demo (SIGKILL runs no finally) and then
            # stops every group it was told about; a parent-death signal would not reach
            # mosquitto, which changes its user and so loses it.
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        assert self._watchdog.stdin is not None
        with contextlib.suppress(OSError):
            self._watchdog.stdin.write(line.encode())
            self._watchdog.stdin.flush()

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise DemoError(
                    f"{name} exited with status {proc.returncode}; "
                    f"see {self.log_dir / (name + '.log')}"
                )

    def stop_all(self, last: Sequence[str] = ("mosquitto",)) -> None:
        """Stop everything, newest first; the processes named in ``last`` (the broker) only
        once the others have exited, so the nodes can still publish their offline status."""
        first = [(n, p) for n, p in reversed(self.procs) if n not in last]
        then = [(n, p) for n, p in reversed(self.procs) if n in last]
        for group in (first, then):
            self._stop(group)
        self.procs.clear()
        if self._watchdog is not None:
            self._watch("clear\n")
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.close()
            self._watchdog.wait(30)
            self._watchdog = None

    @staticmethod
    def _stop(group: Sequence[tuple[str, subprocess.Popen[bytes]]]) -> None:
        for _, proc in group:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in group:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class DemoError(VerifierError):
    """The demo could not run (a tool missing, a process that failed or never answered)."""


# The watchdog's program: read process group ids until EOF (the demo exited, however it died),
# then stop every group not cleared: SIGTERM, and SIGKILL for those still there after 10 s.
_WATCHDOG = """
import os, signal, sys, time
groups = []
for line in sys.stdin:
    groups = [] if line.strip() == "clear" else groups + [int(line)]
def alive(g):  # a group whose leader is a zombie (not reaped yet) counts as gone
    try:
        os.killpg(g, 0)
        with open(f"/proc/{g}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
for sig in (signal.SIGTERM, signal.SIGKILL):
    for g in groups:
        try:
            os.killpg(g, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while any(alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that asyncio.run cancels demo() and its finally stops children


def run_checked(argv: Sequence[str], what: str, log: Path) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=120)
    with log.open("a") as f:
        f.write(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}\n")
    if r.returncode != 0:
        raise DemoError(f"{what} failed ({r.returncode}): {r.stderr.strip()[-600:]}")
    return r.stdout


async def wait_http(session: aiohttp.ClientSession, url: str, children: Children,
                    limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while True:
        children.check_alive()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise DemoError(f"{url} did not answer within {limit:.0f}s")
        await asyncio.sleep(0.2)


def start_mosquitto(state: Path, children: Children) -> tuple[int, BrokerFiles]:
    """mosquitto with the production posture: per-node accounts and ACL (demo_broker)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise DemoError("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    files = write_broker_files(state / "broker", [node_id for node_id, _ in NODES], port)
    children.start("mosquitto", [binary, "-c", str(files.conf)])
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return port, files
        children.check_alive()
        if time.monotonic() > deadline:
            raise DemoError("mosquitto did not start")
        time.sleep(0.05)


@dataclass
class Node:
    id: str
    operator: str
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def public_pem(self) -> str:
        return public_key_pem(load_private_key(self.dir / "keys" / "signing.pem").public_key())


def use_account(config: Path, user: str, password_file: Path) -> None:
    """Point a node's ``[mqtt]`` at its broker account (``rebuilder init`` leaves it empty)."""
    doc = read_toml(config, 1024 * 1024)
    mqtt = doc.get("mqtt")
    if not isinstance(mqtt, dict):
        raise DemoError(f"{config}: expected an [mqtt] table to fill in")
    mqtt.update(username=user, password_file=str(password_file))
    write_toml(config, doc, "written by rebuilder init, [mqtt] account set by the demo")


def write_coordinator_config(
    state: Path, nodes: list[Node], mqtt_port: int, port: int, password_file: Path | None = None
) -> Path:
    d = state / "coordinator"
    (d / "keys").mkdir(parents=True, exist_ok=True)
    mqtt: dict[str, Any] = {"host": "127.0.0.1", "port": mqtt_port}
    if password_file is not None:
        mqtt.update(username=COORDINATOR_USER, password_file=str(password_file))
    rebuilders = []
    for n in nodes:
        (d / "keys" / f"{n.id}.pub").write_text(n.public_pem())
        rebuilders.append({"id": n.id, "operator": n.operator, "url": n.url,
                           "public_key_file": f"keys/{n.id}.pub"})
    path = d / "coordinator.toml"
    write_toml(path, {
        "coordinator": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
                        "database": "coordinator.db", "catchup_interval": 10,
                        "online_after": 60},
        "mqtt": mqtt,
        "rebuilder": rebuilders,
    })
    return path


def write_policy(state: Path, nodes: list[Node]) -> Path:
    path = state / "policy.toml"
    write_toml(path, {
        "threshold": 2,
        "require_distinct_operators": True,
        "reject_on_mismatch": 1,
        "max_age_days": 0,
        "rebuilder": [{
            "id": n.id,
            # a policy names operators by id (verifier.md): "Alpha University" -> alpha-university
            "operator": re.sub(r"[^a-z0-9]+", "-", n.operator.lower()).strip("-"),
            "url": n.url,
            # inline, so that the file can be copied (docs/verifier.md, "Try it against the demo")
            "public_key": n.public_pem().strip(),
        } for n in nodes],
    }, "2 of these 3 rebuilders, of distinct operators, must have reproduced a .deb")
    return path


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        if r.status != 200:
            return None
        return await r.json(content_type=None)


async def wait_for_builds(
    session: aiohttp.ClientSession,
    nodes: list[Node],
    packages: Sequence[Any],
    coordinator: str,
    children: Children,
    out: Out,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Until every node has a finished build of every package and the coordinator has them."""
    deadline = time.monotonic() + WAIT_LIMIT
    started = time.monotonic()
    builds: dict[tuple[str, str], dict[str, Any]] = {}
    while True:
        children.check_alive()
        for n in nodes:
            for p in packages:
                if (n.id, p.source) in builds:
                    continue
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    doc = await get_json(
                        session, f"{n.url}/v1/packages/debian/{p.source}/{p.version}"
                    )
                    done = [
                        b for b in (doc or {}).get("builds", [])
                        if b.get("status") in ("done", "failed")
                    ]
                    if done:
                        builds[(n.id, p.source)] = done[-1]
        stored: dict[str, int] = {}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            doc = await get_json(session, f"{coordinator}/v1/rebuilders")
            for r in (doc or {}).get("rebuilders", []):
                stored[r["id"]] = sum(r["counts"].values())
        per_node = "  ".join(
            f"{n.id} {sum((n.id, p.source) in builds for p in packages)}/{len(packages)}"
            for n in nodes
        )
        at_coordinator = sum(min(stored.get(n.id, 0), len(packages)) for n in nodes)
        out.progress(
            f"[{time.monotonic() - started:5.0f}s] built: {per_node}   "
            f"coordinator has {at_coordinator}/{len(nodes) * len(packages)}"
        )
        if len(builds) == len(nodes) * len(packages) and at_coordinator == len(builds):
            out.end_progress()
            return builds
        if time.monotonic() > deadline:
            out.end_progress()
            raise DemoError(f"not every node handled every package within {WAIT_LIMIT:.0f}s")
        await asyncio.sleep(1)


def report_for(
    deb_name: str, source: str, builds: dict[tuple[str, str], dict[str, Any]]
) -> str | None:
    for (_, src), b in sorted(builds.items()):
        if src != source:
            continue
        for o in b.get("outputs") or []:
            if o.get("name") == deb_name and o.get("report_html_url"):
                return str(o["report_html_url"])
    return None


def print_table(rows: list[dict[str, str]], out: TextIO) -> None:
    headers = ["PACKAGE", "KIND", "VERDICT", "AGREEING REBUILDERS", "EXPECTED"]
    keys = ["package", "kind", "verdict", "agreeing", "expected"]
    widths = [max(len(h), *(len(r[k]) for r in rows)) for h, k in zip(headers, keys, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print("  ".join(r[k].ljust(w) for k, w in zip(keys, widths, strict=True)), file=out)
        if r.get("reason"):
            lines = textwrap.wrap(r["reason"], 96, initial_indent="    why:    ",
                                  subsequent_indent="            ", break_long_words=False)
            print("\n".join(lines), file=out)
        if r.get("report"):
            print(f"    report: {r['report']}", file=out)
        if r.get("page"):
            print(f"    page:   {r['page']}", file=out)


@contextlib.asynccontextmanager
async def _served(path: Path) -> AsyncIterator[str]:
    from rqdemo.testrepo import serve_repository

    async with serve_repository(path) as url:
        yield url


async def demo(state: Path, once: bool, out: Out) -> int:
    from rqdemo.testrepo import build_test_repository, default_cache_dir
    from rqdemo.testrepo._repo import host_arch

    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children = Children(logs)
    t0 = time.monotonic()
    try:
        out.step("Building the local APT repository (real dpkg-buildpackage; cached afterwards)")
        out.info(f"package cache: {default_cache_dir()} (set RQ_TESTREPO_CACHE to move it; "
                 "delete it to rebuild from scratch)")
        repo = await asyncio.to_thread(build_test_repository, state / "repo")
        out.info("taken from the cache" if repo.cached else "built, and cached for next time")
        for p in repo.packages:
            out.info(f"{p.kind:<15} {p.source} {p.version}: "
                     + ", ".join(d.name for d in p.debs))
        async with _served(repo.path) as repo_url, aiohttp.ClientSession() as session:
            out.info(f"serving it at {repo_url} (InRelease signed; nodes verify it under "
                     f"{repo.keyring})")
            out.step("Starting mosquitto, three rebuilder nodes and the coordinator")
            mqtt_port, broker = start_mosquitto(state, children)
            out.info(f"mosquitto on 127.0.0.1:{mqtt_port} (one account per node, ACL, "
                     "no anonymous access)")
            nodes = []
            for node_id, operator in NODES:
                port = free_port()
                node = Node(node_id, operator, port, state / "nodes" / node_id)
                await asyncio.to_thread(
                    run_checked,
                    [
                        sys.executable, "-m", "rebuilder.cli", "init",
                        "--dir", str(node.dir), "--id", node_id, "--operator", operator,
                        "--public-url", node.url, "--listen", f"127.0.0.1:{port}",
                        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mqtt_port),
                        "--repository-url", repo_url,
                        # the authenticated path: InRelease verified under the repository's
                        # generated key, as APT's Signed-By
                        "--signed-by", str(repo.keyring),
                        "--architectures", f"{host_arch()},all",
                        "--poll-interval", "2",
                    ],
                    f"rebuilder init {node_id}",
                    logs / "init.log",
                )
                use_account(node.dir / "config.toml", node_id, broker.passwords[node_id])
                nodes.append(node)
            coord_port = free_port()
            coordinator = f"http://127.0.0.1:{coord_port}"
            config = write_coordinator_config(state, nodes, mqtt_port, coord_port,
                                              broker.passwords[COORDINATOR_USER])
            for node in nodes:
                children.start(
                    node.id,
                    [sys.executable, "-m", "rebuilder", "run", "--config",  # signals caught first
                     str(node.dir / "config.toml")],
                )
            for node in nodes:
                await wait_http(session, f"{node.url}/healthz", children)
                out.info(f"{node.id:<9} ({node.operator}) at {node.url}")
            children.start(
                "coordinator",
                [sys.executable, "-m", "coordinator", "run", "--config", str(config)],
            )
            await wait_http(session, f"{coordinator}/healthz", children)
            out.info(f"coordinator at {coordinator}")

            out.step("Rebuilding every package on every node")
            builds = await wait_for_builds(
                session, nodes, repo.packages, coordinator, children, out
            )

            out.step("Checking every published .deb with `verifier check` (2 of 3 operators)")
            policy = write_policy(state, nodes)
            debs = [(p, d) for p in repo.packages for d in p.debs]
            verifier = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "verifier.cli", "check", "--policy", str(policy),
                "--coordinator", coordinator, "--json",
                *(str(repo.path / d.path) for _, d in debs),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            async with asyncio.timeout(120):
                stdout_b, stderr_b = await verifier.communicate()
            stdout, stderr = stdout_b.decode(), stderr_b.decode()
            (logs / "verifier.log").write_text(stdout + stderr)
            try:
                decisions = json.loads(stdout)
            except json.JSONDecodeError as e:
                raise DemoError(
                    f"verifier check printed no JSON ({verifier.returncode}): "
                    f"{stderr.strip()[-600:]}"
                ) from e
            rows = []
            all_as_expected = True
            for (p, d), decision in zip(debs, decisions, strict=True):
                accepted = bool(decision["accepted"])
                expected = EXPECTED.get(p.kind, True)
                all_as_expected &= accepted == expected
                agreeing = [r["id"] for r in decision["rebuilders"] if r["status"] == "agrees"]
                report = next(
                    (r["report_url"] for r in decision["rebuilders"] if r.get("report_url")),
                    None,
                ) or report_for(d.name, p.source, builds)
                rows.append(
                    {
                        "package": d.name,
                        "kind": p.kind,
                        "verdict": "ACCEPTED" if accepted else "REJECTED",
                        "agreeing": ", ".join(agreeing) or "none",
                        "expected": "yes" if accepted == expected else "NO",
                        "reason": "" if accepted else (decision["reasons"] or [""])[0],
                        "report": "" if accepted else (report or ""),
                        "page": "" if accepted
                        else f"{coordinator}/packages/{p.source}/{p.version}",
                    }
                )
            print(file=out.stream)
            print_table(rows, out.stream)
            print(file=out.stream)
            out.info(f"verdicts in {time.monotonic() - t0:.0f}s; "
                     + ("all as expected" if all_as_expected else "SOME NOT AS EXPECTED"))
            if once:
                # Everything stops on return: do not end on a URL that is already gone.
                out.step("Stopping the network (--once / DEMO_ONCE); run `make demo` without "
                         "DEMO_ONCE to browse the dashboard")
                return 0 if all_as_expected else 1
            out.step(f"Dashboard: {coordinator}/")
            out.info(f"to try the APT hook against this network (docs/verifier.md, \"Try it "
                     f"against the demo\"): repository {repo_url}, its keyring {repo.keyring}, "
                     f"the policy {policy}")
            out.info("the network keeps running; press Ctrl-C to stop it")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            while not stop.is_set():
                children.check_alive()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2)
            out.step("Stopping the coordinator, the rebuilder nodes and mosquitto")
            return 0 if all_as_expected else 1
    finally:
        out.end_progress()
        children.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rqdemo", description=__doc__)
    parser.add_argument("--once", action="store_true",
                        help="exit after the verdicts: 0 when all are as expected")
    parser.add_argument("--state", type=Path, help="keep state here (default: a temp dir)")
    args = parser.parse_args(argv)
    state = args.state or Path(tempfile.mkdtemp(prefix="rq-demo-"))
    state.mkdir(parents=True, exist_ok=True)
    out = Out()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    out.step(f"repro-quorum demo; state and logs in {state}")
    try:
        code = asyncio.run(demo(state.resolve(), args.once, out))
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        print(f"demo: logs are in {state / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        code = 0
    if args.state is None and code == 0:
        shutil.rmtree(state, ignore_errors=True)
    elif code != 0:
        print(f"demo: state and logs kept in {state}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
