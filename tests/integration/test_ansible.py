"""The Ansible deployment: lint, syntax, and real runs of the playbook against this machine.

The playbook runs with ``-c local`` and an inventory that points every path (virtualenv, state,
configuration, Mosquitto files, systemd units) into the test's tmp directory and skips starting
services (``repro_quorum_manage_services: false``); the test then starts what was installed itself:
a real mosquitto from the rendered configuration, and the installed ``rebuilder``/``coordinator``.
System users the roles create get unique ``rqtest-`` names and are removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support import free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
ROLES = ("repro_quorum", "mqtt_broker", "rebuilder", "coordinator")
GROUP_VARS_OF_ROLE = {
    "repro_quorum": "all.yml",
    "mqtt_broker": "mqtt_broker.yml",
    "rebuilder": "rebuilders.yml",
    "coordinator": "coordinator.yml",
}
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the playbook creates system users: run the suite as root"
)


def tool(name: str) -> str:
    """A command from the test virtualenv (ansible-core and ansible-lint are test extras)."""
    candidate = VENV_BIN / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} not found: install the test extras (make setup)"
    return found


def ansible_env(tmp: Path) -> dict[str, str]:
    home = tmp / "ansible-home"
    home.mkdir(exist_ok=True)
    return os.environ | {
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_LINT_SKIP_SCHEMA_UPDATE": "1",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }


def run_playbook(inventory: Path, tmp: Path, *args: str) -> tuple[str, dict[str, int]]:
    """Run site.yml; return its output and the PLAY RECAP's ``changed`` count per host."""
    proc = subprocess.run(
        [tool("ansible-playbook"), "-i", str(inventory), "site.yml", *args],
        cwd=ANSIBLE_DIR,
        env=ansible_env(tmp),
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ansible-playbook failed ({proc.returncode}):\n{output[-6000:]}"
    recap = {m["host"]: int(m["changed"]) for m in RECAP.finditer(proc.stdout)}
    assert recap, f"no PLAY RECAP in the output:\n{output[-3000:]}"
    for m in RECAP.finditer(proc.stdout):
        assert m["failed"] == "0" and m["unreachable"] == "0", m.group(0)
    return output, recap


def changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported a change (for a readable idempotence failure)."""
    names, current = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            current = line
        elif line.startswith("changed:"):
            names.append(f"{current} {line}")
    return names


def write_inventory(path: Path, inventory: dict[str, Any]) -> Path:
    path.write_text(json.dumps(inventory, indent=2))  # JSON is YAML: the yaml plugin reads it
    return path


def remove_users(*names: str) -> None:
    for name in names:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


# --- static checks ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ansible_lint_production_profile_passes_offline(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tool("ansible-lint"), "--offline", "--profile", "production", "ansible/"],
        cwd=REPO,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Profile 'production' was required, and it passed" in output, output[-2000:]


def test_playbook_syntax_check_passes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tool("ansible-playbook"), "-i", "inventory.example.yml", "--syntax-check", "site.yml"],
        cwd=ANSIBLE_DIR,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def defaults_of(role: str) -> set[str]:
    text = (ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").read_text()
    return set(re.findall(r"^([a-z][a-z0-9_]*):", text, re.MULTILINE))


@pytest.mark.parametrize("role", ROLES)
def test_group_vars_document_every_role_variable(role: str) -> None:
    """Every default of a role is described in its group_vars file, and nothing else is there.

    group_vars only documents (values placed there would override the operator's inventory
    group vars), so the two lists must not drift apart.
    """
    doc = (ANSIBLE_DIR / "group_vars" / GROUP_VARS_OF_ROLE[role]).read_text()
    documented = set(re.findall(r"^# ([a-z][a-z0-9_]*):", doc, re.MULTILINE))
    prefix = f"{role}_" if role != "rebuilder" else "rebuilder_"
    documented = {v for v in documented if v.startswith(prefix)}
    defaults = defaults_of(role)
    assert defaults, f"no defaults found for role {role}"
    assert defaults - documented == set(), f"undocumented in group_vars: {defaults - documented}"
    required = {"rebuilder_node_id", "rebuilder_node_operator", "rebuilder_repositories"}
    stale = documented - defaults - required
    assert stale == set(), f"documented but not a default of {role}: {stale}"
    # group_vars must not set anything (only comments), see the module docstring of all.yml
    for line in doc.splitlines():
        assert not line or line == "---" or line.startswith("#"), f"a value in group_vars: {line}"


# --- the broker: rendered configuration, accounts and ACL, with a real mosquitto --------------


def broker_inventory(tmp: Path, port: int) -> dict[str, Any]:
    mq = tmp / "mosquitto"
    return {
        "all": {
            "vars": {
                "repro_quorum_manage_services": False,
                "repro_quorum_mqtt_port": port,
                "repro_quorum_secrets_dir": str(tmp / "secrets"),
                "repro_quorum_public_keys_dir": str(tmp / "public-keys"),
                "mqtt_broker_conf_dir": str(mq / "conf.d"),
                "mqtt_broker_password_file": str(mq / "repro-quorum.passwd"),
                "mqtt_broker_acl_file": str(mq / "repro-quorum.acl"),
                "mqtt_broker_bind_address": "127.0.0.1",
            },
            "children": {
                "mqtt_broker": {"hosts": {"localhost": {}}},
                # Two rebuilders and a coordinator elsewhere: only their accounts matter here
                # (--limit localhost runs the broker play alone).
                "rebuilders": {
                    "hosts": {
                        "rb1.invalid": {"rebuilder_node_id": "rb-one"},
                        "rb2.invalid": {"rebuilder_node_id": "rb-two"},
                    }
                },
                "coordinator": {"hosts": {"coord.invalid": {}}},
            },
        }
    }


def localhost_vars() -> dict[str, Any]:
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,
    }


def fix_localhost(inventory: dict[str, Any]) -> dict[str, Any]:
    for group in inventory["all"]["children"].values():
        if "localhost" in group["hosts"]:
            group["hosts"]["localhost"] = localhost_vars()
    return inventory


def start_mosquitto(tmp: Path, conf_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """mosquitto with the rendered conf.d, as Debian's mosquitto.conf would load it."""
    top = tmp / "mosquitto-main.conf"
    top.write_text(
        # `user root`: no privilege drop, so the broker can read files in pytest's private tmp.
        "user root\n"
        "persistence false\n"
        f"log_dest file {tmp / 'mosquitto.log'}\n"
        f"include_dir {conf_dir}\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(top)])
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 10, "mosquitto to listen")
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, (tmp / "mosquitto.log").read_text()
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def secret(tmp: Path, account: str) -> str:
    return (tmp / "secrets" / "mqtt" / account).read_text().strip()


@pytest.fixture(scope="module")
def deployed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, str]]:
    """The broker play run once for the module; the tests below run in file order."""
    tmp_path = tmp_path_factory.mktemp("broker")
    port = free_port()
    inventory = write_inventory(
        tmp_path / "inventory.json", fix_localhost(broker_inventory(tmp_path, port))
    )
    output, recap = run_playbook(inventory, tmp_path, "--limit", "localhost")
    assert recap["localhost"] > 0
    proc = start_mosquitto(tmp_path, tmp_path / "mosquitto" / "conf.d", port)
    try:
        yield tmp_path, port, output
    finally:
        stop(proc)


@pytest.mark.slow
async def test_broker_acl_confines_each_rebuilder_to_its_own_topics(
    deployed_broker: tuple[Path, int, str],
) -> None:
    tmp, port, output = deployed_broker
    passwords = {a: secret(tmp, a) for a in ("rb-one", "rb-two", "coordinator")}
    for account, password in passwords.items():
        assert len(password) >= 32, account
        assert password not in output, f"{account}'s password appears in the playbook output"

    def client(account: str, ident: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            port,
            username=account,
            password=passwords[account],
            identifier=ident,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=10,
        )

    async with client("coordinator", "coord") as coordinator, client("rb-one", "rb1") as rb_one:
        await coordinator.subscribe("rq/v1/attestations/+", qos=1)
        await coordinator.subscribe("rq/v1/status/+", qos=1)
        # rb-one forges rb-two's attestation, then publishes its own. Messages from one client
        # on one QoS arrive in order, so if the forgery had passed it would arrive first.
        await rb_one.publish("rq/v1/attestations/rb-two", b"forged", qos=1)
        await rb_one.publish("rq/v1/status/rb-one", b'{"state": "online"}', qos=1)
        await rb_one.publish("rq/v1/attestations/rb-one", b"genuine", qos=1)
        received: list[tuple[str, bytes]] = []
        async with asyncio.timeout(10):
            async for message in coordinator.messages:
                received.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
                if message.payload == b"genuine":
                    break
        assert received == [
            ("rq/v1/status/rb-one", b'{"state": "online"}'),
            ("rq/v1/attestations/rb-one", b"genuine"),
        ]

        # A rebuilder reads nothing. Mosquitto grants the subscription and filters at delivery.
        await rb_one.subscribe("rq/v1/#", qos=1)
        async with client("rb-two", "rb2") as rb_two:
            await rb_two.publish("rq/v1/attestations/rb-two", b"for the coordinator", qos=1)
        async with asyncio.timeout(10):
            async for message in coordinator.messages:
                if message.payload == b"for the coordinator":
                    break
        # The broker queued that message for every subscriber allowed to read it when it handled
        # the publish. A PUBACK on rb-one's connection now comes after anything queued for rb-one
        # before, so once it is back, an allowed delivery would sit in rb-one's queue.
        await rb_one.publish("rq/v1/status/rb-one", b'{"state": "online"}', qos=1)
        assert len(rb_one.messages) == 0, "rb-one received another node's traffic"

    # Wrong password and anonymous clients are refused.
    for username, password in (("rb-one", "wrong-password"), (None, None)):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", port, username=username, password=password, timeout=5
            ):
                pass


@pytest.mark.slow
def test_broker_play_is_idempotent_and_keeps_accounts_in_sync(
    deployed_broker: tuple[Path, int, str],
) -> None:
    tmp, _, _ = deployed_broker
    inventory = tmp / "inventory.json"
    passwd = tmp / "mosquitto" / "repro-quorum.passwd"
    before = passwd.read_bytes()
    output, recap = run_playbook(inventory, tmp, "--limit", "localhost")
    assert recap["localhost"] == 0, changed_tasks(output)
    assert passwd.read_bytes() == before

    # Drop rb-two from the inventory: its account disappears, the others stay untouched.
    data = json.loads(inventory.read_text())
    del data["all"]["children"]["rebuilders"]["hosts"]["rb2.invalid"]
    write_inventory(inventory, data)
    run_playbook(inventory, tmp, "--limit", "localhost")
    users = [line.split(":", 1)[0] for line in passwd.read_text().splitlines() if line]
    assert sorted(users) == ["coordinator", "rb-one"]
    assert "rb-two" not in (tmp / "mosquitto" / "repro-quorum.acl").read_text()
    kept = {line for line in before.decode().splitlines() if not line.startswith("rb-two:")}
    assert set(passwd.read_text().splitlines()) == kept
