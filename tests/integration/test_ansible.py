"""The Ansible deployment: lint, syntax, and real runs of the playbook against this machine.

The playbook runs with ``-c local`` and an inventory that points every path (virtualenv, state,
configuration, Mosquitto files, systemd units) into the test's tmp directory and skips starting
services (``repro_quorum_manage_services: false``); the test then starts what was installed itself:
a real mosquitto from the rendered configuration, and the installed ``rebuilder``/``coordinator``.
System users the roles create get unique ``rqtest-`` names and are removed afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import pwd
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import jinja2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, for the broker's TLS listener."""
    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "repro-quorum test broker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def broker_inventory(tmp: Path, port: int, tls_port: int) -> dict[str, Any]:
    mq = tmp / "mosquitto"
    cert, key = self_signed_certificate(tmp / "tls")
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
                "repro_quorum_mqtt_tls_port": tls_port,
                "mqtt_broker_tls_cert_file": str(cert),
                "mqtt_broker_tls_key_file": str(key),
                "mqtt_broker_tls_bind_address": "127.0.0.1",
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
    port, tls_port = free_port(), free_port()
    inventory = write_inventory(
        tmp_path / "inventory.json", fix_localhost(broker_inventory(tmp_path, port, tls_port))
    )
    output, recap = run_playbook(inventory, tmp_path, "--limit", "localhost")
    assert recap["localhost"] > 0
    proc = start_mosquitto(tmp_path, tmp_path / "mosquitto" / "conf.d", port)
    wait_until(lambda: port_open(tls_port), 10, "mosquitto's TLS listener")
    try:
        yield tmp_path, port, output
    finally:
        stop(proc)


@pytest.mark.slow
async def test_broker_acl_confines_each_rebuilder_to_its_own_topics(
    deployed_broker: tuple[Path, int, str],
) -> None:
    tmp, port, output = deployed_broker
    conf = (tmp / "mosquitto" / "conf.d" / "repro-quorum.conf").read_text()
    passwords = {a: secret(tmp, a) for a in ("rb-one", "rb-two", "coordinator")}
    for account, password in passwords.items():
        assert len(password) >= 32, account
        assert (tmp / "secrets" / "mqtt" / account).stat().st_mode & 0o077 == 0, account
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

    # The TLS listener, with the same accounts and ACL.
    tls_port = int(re.findall(r"^listener (\d+)", conf, re.MULTILINE)[1])
    context = ssl.create_default_context(cafile=str(tmp / "tls" / "cert.pem"))
    async with (
        aiomqtt.Client(
            "127.0.0.1",
            tls_port,
            username="coordinator",
            password=passwords["coordinator"],
            tls_context=context,
            timeout=10,
        ) as coordinator,
        aiomqtt.Client(
            "127.0.0.1",
            tls_port,
            username="rb-two",
            password=passwords["rb-two"],
            tls_context=context,
            timeout=10,
        ) as rb_two,
    ):
        await coordinator.subscribe("rq/v1/attestations/+", qos=1)
        await rb_two.publish("rq/v1/attestations/rb-one", b"forged over TLS", qos=1)
        await rb_two.publish("rq/v1/attestations/rb-two", b"over TLS", qos=1)
        async with asyncio.timeout(10):
            async for message in coordinator.messages:
                assert message.payload == b"over TLS"
                break

    # Wrong password and anonymous clients are refused.
    for username, password in (("rb-one", "wrong-password"), (None, None)):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", port, username=username, password=password, timeout=5
            ):
                pass


@pytest.mark.slow
def test_broker_play_removes_the_account_of_a_rebuilder_leaving_the_inventory(
    deployed_broker: tuple[Path, int, str],
) -> None:
    """Accounts follow the inventory; the other accounts' hashes stay byte-identical.

    (Idempotence of the broker play: the full deployment test below runs it twice.)
    """
    tmp, _, _ = deployed_broker
    inventory = tmp / "inventory.json"
    passwd = tmp / "mosquitto" / "repro-quorum.passwd"
    before = passwd.read_bytes()

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


# --- the whole playbook on this machine: broker, rebuilder and coordinator --------------------

# Unique per run: two checkouts running this test at once must not share (and remove) users.
RB_USER, COORD_USER = (f"rqtest-rebuilder{os.getpid() % 100000}",
                       f"rqtest-coordinator{os.getpid() % 100000}")


def doc_toml_blocks() -> list[dict[str, Any]]:
    """The TOML examples of docs/configuration.md (the contract the roles render)."""
    text = (REPO / "docs" / "configuration.md").read_text()
    return [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", text, re.DOTALL)]


def full_inventory(base: Path, ports: dict[str, int]) -> dict[str, Any]:
    host = localhost_vars()
    return {
        "all": {
            "vars": {
                "repro_quorum_manage_services": False,
                # apt runs in the broker test; three more runs of it here cost a minute
                "repro_quorum_install_system_packages": False,
                "repro_quorum_install_source_dir": str(base / "src"),
                "repro_quorum_venv_dir": str(base / "opt" / "venv"),
                "repro_quorum_systemd_unit_dir": str(base / "systemd"),
                "repro_quorum_secrets_dir": str(base / "control" / "secrets"),
                "repro_quorum_public_keys_dir": str(base / "control" / "public-keys"),
                "repro_quorum_mqtt_host": "127.0.0.1",
                "repro_quorum_mqtt_port": ports["mqtt"],
                "mqtt_broker_conf_dir": str(base / "mosquitto" / "conf.d"),
                "mqtt_broker_password_file": str(base / "mosquitto" / "repro-quorum.passwd"),
                "mqtt_broker_acl_file": str(base / "mosquitto" / "repro-quorum.acl"),
                "mqtt_broker_bind_address": "127.0.0.1",
                "rebuilder_node_id": "rb-test",
                "rebuilder_node_operator": "test-operator",
                "rebuilder_listen": f"127.0.0.1:{ports['node']}",
                "rebuilder_public_url": f"http://127.0.0.1:{ports['node']}",
                "rebuilder_user": RB_USER,
                "rebuilder_config_dir": str(base / "etc" / "rebuilder"),
                "rebuilder_state_dir": str(base / "var" / "rebuilder"),
                "rebuilder_build_environment": "host",
                "rebuilder_repositories": [
                    {
                        "name": "local",
                        # nothing listens there: the watcher's polls fail and the node carries on
                        "base_url": f"http://127.0.0.1:{ports['repo']}/debian",
                        "suite": "stable",
                    }
                ],
                "coordinator_listen": f"127.0.0.1:{ports['coordinator']}",
                "coordinator_public_url": f"http://127.0.0.1:{ports['coordinator']}",
                "coordinator_user": COORD_USER,
                "coordinator_config_dir": str(base / "etc" / "coordinator"),
                "coordinator_state_dir": str(base / "var" / "coordinator"),
                "coordinator_catchup_interval": 5,
                "coordinator_verify_workers": 1,
            },
            "children": {
                group: {"hosts": {"localhost": host}}
                for group in ("mqtt_broker", "rebuilders", "coordinator")
            },
        }
    }


@pytest.fixture
def deploy_base() -> Iterator[Path]:
    """A world-traversable directory (pytest's tmp is private to root) for everything installed,
    so the daemons can run as the system users the roles create."""
    base = Path(tempfile.mkdtemp(prefix="rq-ansible-"))
    base.chmod(0o755)
    # The source tree to install, copied so pip's in-tree build leaves nothing in the checkout.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("verifier", "rebuilder", "coordinator", "rqdb"):
        shutil.copytree(REPO / name, base / "src" / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, base / "src" / name)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        remove_users(RB_USER, COORD_USER)


def start_as(user: str, argv: list[str], log: Path, home: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"},
        )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def answers(url: str) -> bool:
    try:
        get_json(url)
    except OSError:
        return False
    return True


@needs_root
@pytest.mark.slow
def test_playbook_deploys_a_working_node_and_coordinator(deploy_base: Path) -> None:
    base = deploy_base
    ports = {name: free_port() for name in ("mqtt", "node", "coordinator", "repo")}
    inventory = write_inventory(base / "inventory.json", full_inventory(base, ports))
    state = base / "var" / "rebuilder"
    key = state / "keys" / "signing.pem"

    output, recap = run_playbook(inventory, base)
    assert recap["localhost"] > 0

    # The signing key was generated on the host, belongs to the node's user, mode 0600.
    st = key.stat()
    assert (st.st_mode & 0o777, pwd.getpwuid(st.st_uid).pw_name) == (0o600, RB_USER)
    assert not (state / "config.toml").exists(), "rebuilder init's config was left behind"
    public_keys = base / "control" / "public-keys"
    registration = json.loads((public_keys / "rb-test.json").read_text())
    assert registration["public_key"] == (public_keys / "rb-test.pub").read_text()
    assert (registration["id"], registration["operator"]) == ("rb-test", "test-operator")
    for account in ("rb-test", "coordinator"):
        password = (base / "control" / "secrets" / "mqtt" / account).read_text().strip()
        assert password not in output, f"{account}'s MQTT password appears in the playbook output"

    # The rendered configurations have exactly the keys of docs/configuration.md.
    node_doc, coord_doc = doc_toml_blocks()
    node = tomllib.loads((base / "etc" / "rebuilder" / "config.toml").read_text())
    coord = tomllib.loads((base / "etc" / "coordinator" / "coordinator.toml").read_text())
    assert set(node) == set(node_doc)
    for table in ("node", "mqtt", "build", "diffoscope"):
        assert set(node[table]) == set(node_doc[table]), table
    assert set(node["repository"][0]) == set(node_doc["repository"][0])
    assert set(coord) == set(coord_doc)
    assert set(coord["coordinator"]) == set(coord_doc["coordinator"])
    assert set(coord["mqtt"]) == set(node_doc["mqtt"])  # "same keys as the node's"
    assert [r["id"] for r in coord["rebuilder"]] == ["rb-test"]
    assert set(coord["rebuilder"][0]) == set(coord_doc["rebuilder"][0])
    assert (base / "etc" / "coordinator" / "keys" / "rb-test.pub").read_text() == registration[
        "public_key"
    ]
    unit = (base / "systemd" / "repro-quorum-rebuilder.service").read_text()
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", f"ReadWritePaths={state}"):
        assert f"\n{setting}\n" in unit
    assert f"\nUser={RB_USER}\n" in unit  # host mode: not root
    for breaks_bwrap in (
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "RestrictNamespaces",
        "PrivateUsers",
        "ProtectHostname",
        "MemoryDenyWriteExecute",
    ):
        assert f"\n{breaks_bwrap}=" not in unit, breaks_bwrap

    # A second run changes nothing and keeps the key.
    key_bytes = key.read_bytes()
    output, recap = run_playbook(inventory, base)
    assert recap["localhost"] == 0, changed_tasks(output)
    # --check on a deployed host: nothing to change, nothing fails.
    secrets = sorted((base / "control" / "secrets").rglob("*"))
    output, recap = run_playbook(inventory, base, "--check", "--diff")
    assert recap["localhost"] == 0, changed_tasks(output)
    assert sorted((base / "control" / "secrets").rglob("*")) == secrets
    assert key.read_bytes() == key_bytes

    # An upgrade (the source tree changed) reinstalls the package and keeps the key.
    with (base / "src" / "rebuilder" / "__init__.py").open("a") as f:
        f.write("# upgraded\n")
    output, recap = run_playbook(inventory, base)
    changed = "\n".join(changed_tasks(output))
    assert "Install repro-quorum and its dependencies" in changed, changed
    assert "Note which install the service runs" in changed, changed
    assert key.read_bytes() == key_bytes
    site = next((base / "opt" / "venv" / "lib").glob("python3*/site-packages"))
    assert (site / "rebuilder" / "__init__.py").read_text().endswith("# upgraded\n")

    # Start what was installed, as the users the roles created, with the rendered files.
    venv_bin = base / "opt" / "venv" / "bin"
    broker = start_mosquitto(base, base / "mosquitto" / "conf.d", ports["mqtt"])
    processes = [broker]
    try:
        processes.append(
            start_as(
                RB_USER,
                [
                    str(venv_bin / "rebuilder"),
                    "run",
                    "--config",
                    str(base / "etc/rebuilder/config.toml"),
                ],
                base / "rebuilder.log",
                state,
            )
        )
        processes.append(
            start_as(
                COORD_USER,
                [
                    str(venv_bin / "coordinator"),
                    "run",
                    "--config",
                    str(base / "etc/coordinator/coordinator.toml"),
                ],
                base / "coordinator.log",
                base / "var" / "coordinator",
            )
        )

        def logs() -> str:
            return "\n".join(
                f"--- {name}\n{(base / name).read_text(errors='replace')[-3000:]}"
                for name in ("rebuilder.log", "coordinator.log", "mosquitto.log")
                if (base / name).exists()
            )

        node_url = f"http://127.0.0.1:{ports['node']}"
        coord_url = f"http://127.0.0.1:{ports['coordinator']}"
        for url in (f"{node_url}/v1/node", f"{coord_url}/v1/rebuilders"):
            try:
                wait_until(lambda url=url: answers(url), 60, url)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{logs()}") from None
        served = get_json(f"{node_url}/v1/node")
        assert served["public_key"] == registration["public_key"]
        assert served["keyid"] == registration["keyid"]
        assert (served["id"], served["url"]) == ("rb-test", node_url)

        # Both daemons log in to the broker with the generated passwords, and the coordinator
        # hears the node (its retained status over MQTT, or the HTTP catch-up).
        log = base / "mosquitto.log"
        for user in ("rb-test", "coordinator"):
            try:
                wait_until(lambda user=user: f"u'{user}'" in log.read_text(), 30, f"{user} on MQTT")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{logs()}") from None
        assert "not authorised" not in log.read_text().lower(), logs()

        def coordinator_sees_node() -> bool:
            rebuilders = get_json(f"{coord_url}/v1/rebuilders")["rebuilders"]
            return any(r["id"] == "rb-test" and r["online"] for r in rebuilders)

        try:
            wait_until(coordinator_sees_node, 30, "the coordinator to see rb-test online")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{logs()}") from None
        listed = get_json(f"{coord_url}/v1/rebuilders")["rebuilders"]
        assert [(r["id"], r["keyid"]) for r in listed] == [("rb-test", registration["keyid"])]
    finally:
        for proc in reversed(processes):
            stop(proc)


@pytest.mark.slow
@pytest.mark.parametrize(
    "node_id",
    [
        "rb-one\ntopic readwrite #",  # would add an ACL line granting everything
        "rb/#",  # would widen the node's topics to a wildcard
        "Rb-One",  # outside [a-z0-9][a-z0-9-]{0,62}
    ],
    ids=["acl-injection", "topic-wildcard", "uppercase"],
)
def test_broker_play_refuses_a_node_id_that_is_not_a_plain_name(
    tmp_path: Path, node_id: str
) -> None:
    inventory = broker_inventory(tmp_path, free_port(), free_port())
    inventory["all"]["children"]["rebuilders"]["hosts"]["rb2.invalid"]["rebuilder_node_id"] = (
        node_id
    )
    path = write_inventory(tmp_path / "inventory.json", fix_localhost(inventory))
    proc = subprocess.run(
        [tool("ansible-playbook"), "-i", str(path), "site.yml", "--limit", "localhost"],
        cwd=ANSIBLE_DIR,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "needs a distinct rebuilder_node_id" in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "mosquitto" / "repro-quorum.acl").exists()
    assert not (tmp_path / "mosquitto" / "repro-quorum.passwd").exists()


def render_rebuilder_unit(run_as_root: bool) -> str:
    """The rebuilder's unit template rendered as the template module does (trim_blocks)."""
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, autoescape=False)  # noqa: S701
    env.filters["bool"] = bool
    template = env.from_string(
        (ANSIBLE_DIR / "roles/rebuilder/templates/rebuilder.service.j2").read_text()
    )
    return template.render(
        rebuilder_run_as_root=run_as_root,
        rebuilder_user="rq-rebuilder",
        rebuilder_group="rq-rebuilder",
        rebuilder_state_dir="/var/lib/repro-quorum/rebuilder",
        rebuilder_config_dir="/etc/repro-quorum/rebuilder",
        rebuilder_node_id="rb-x",
        rebuilder_foreign_arch_builds=False,
        rebuilder_build_parallel=4,
        rebuilder_build_max_processes=8192,
        repro_quorum_venv_dir="/opt/repro-quorum/venv",
    )


def test_rebuilder_unit_runs_mmdebstrap_mode_as_bounded_root() -> None:
    unit = render_rebuilder_unit(run_as_root=True)
    settings = [line for line in unit.splitlines() if line and not line.startswith("#")]
    assert not any(line.startswith(("User=", "Group=", "PrivateDevices=")) for line in settings)
    caps = next(line for line in settings if line.startswith("CapabilityBoundingSet="))
    assert {"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_SETUID"} <= set(
        caps.removeprefix("CapabilityBoundingSet=").split()
    )
    assert "CAP_SYS_MODULE" not in caps and "CAP_SYS_PTRACE" not in caps
    assert "NoNewPrivileges=yes" in settings and "ProtectSystem=strict" in settings

    host = render_rebuilder_unit(run_as_root=False).splitlines()
    assert "User=rq-rebuilder" in host and "CapabilityBoundingSet=" in host
    assert "PrivateDevices=yes" in host
    for lines in (settings, host):
        # per-build cgroups: the node owns its cgroup and may write below it
        assert "Delegate=yes" in lines and "MemorySwapMax=0" in lines
        assert not any(line.startswith("ProtectControlGroups=") for line in lines)
        assert "TasksMax=33536" in lines  # 4 builds x (8192 + 64) + 512


@needs_root
@pytest.mark.slow
def test_check_mode_on_fresh_hosts_changes_nothing_and_writes_no_secret(
    deploy_base: Path,
) -> None:
    """`ansible-playbook --check` before the first real run: it reports what it would do,
    fails on nothing that only a real run creates, and writes no password anywhere."""
    base = deploy_base
    ports = {name: free_port() for name in ("mqtt", "node", "coordinator", "repo")}
    inventory = write_inventory(base / "inventory.json", full_inventory(base, ports))
    _, recap = run_playbook(inventory, base, "--check")
    assert recap["localhost"] > 0  # it would change things
    assert not (base / "control" / "secrets").exists(), "a check run wrote secrets"
    for path in ("opt", "var", "etc", "mosquitto", "systemd"):
        assert not (base / path).exists(), f"a check run created {path}"
