"""The demo's mosquitto, set up as the Ansible role sets up production (ansible/roles/mqtt_broker):
one account per rebuilder and one for the coordinator, anonymous clients refused, and the same
ACL (each rebuilder writes only its own attestation and status topics and reads nothing; the
coordinator reads them all and writes only events), and a ``max_packet_size`` matching the
coordinator's envelope cap. ``tests/integration/test_demo_broker.py`` checks the ACL against
the role's template and the posture against a real mosquitto::

    accounts = write_broker_files(state, ["rb-alpha", "rb-beta"], port)
    accounts.passwords["rb-alpha"]          # a file holding that account's password
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from coordinator.config import Limits
from coordinator.mqtt import PACKET_OVERHEAD

__all__ = ["COORDINATOR_USER", "MAX_PACKET_SIZE", "BrokerFiles", "acl", "write_broker_files"]

COORDINATOR_USER = "coordinator"
# The largest packet the broker takes: what the coordinator announces (its envelope cap plus
# room for the packet's headers); the Ansible role's mqtt_broker_max_packet_size default.
MAX_PACKET_SIZE = Limits().max_envelope_bytes + PACKET_OVERHEAD
_PBKDF2_ITERATIONS = 101  # mosquitto_passwd's own default for its $7$ hashes


@dataclass(frozen=True)
class BrokerFiles:
    conf: Path
    passwords: dict[str, Path]  # account -> file holding its password (mode 0600)


def acl(rebuilder_ids: list[str], coordinator_users: list[str]) -> str:
    """The ACL of ansible/roles/mqtt_broker/templates/repro-quorum.acl.j2, for these accounts."""
    out = ["# repro-quorum demo: the ACL of the Ansible role mqtt_broker."]
    for rid in sorted(rebuilder_ids):
        out += ["", f"user {rid}", f"topic write rq/v1/attestations/{rid}",
                f"topic write rq/v1/status/{rid}", f"topic write rq/v1/checkpoints/{rid}"]
    for user in sorted(coordinator_users):
        out += ["", f"user {user}", "topic read rq/v1/attestations/+",
                "topic read rq/v1/status/+", "topic read rq/v1/checkpoints/+",
                "topic write rq/v1/events/#"]
    return "\n".join(out) + "\n"


def _password_entry(user: str, password: str) -> str:
    """A mosquitto password file line ($7$: PBKDF2-SHA512, as mosquitto_passwd writes)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, 64)
    return (f"{user}:$7${_PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}\n")


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_broker_files(directory: Path, rebuilder_ids: list[str], port: int) -> BrokerFiles:
    """Accounts, ACL and configuration of a mosquitto listening on 127.0.0.1:``port``."""
    directory.mkdir(parents=True, exist_ok=True)
    accounts = [*rebuilder_ids, COORDINATOR_USER]
    passwords: dict[str, Path] = {}
    entries = []
    for user in accounts:
        password = secrets.token_urlsafe(24)
        passwords[user] = directory / f"{user}.password"
        _private(passwords[user], password + "\n")
        entries.append(_password_entry(user, password))
    _private(directory / "mosquitto.passwd", "".join(entries))
    _private(directory / "mosquitto.acl", acl(rebuilder_ids, [COORDINATOR_USER]))
    conf = directory / "mosquitto.conf"
    conf.write_text(
        "# repro-quorum demo: the access settings of the Ansible role mqtt_broker.\n"
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"password_file {directory / 'mosquitto.passwd'}\n"
        f"acl_file {directory / 'mosquitto.acl'}\n"
        f"max_packet_size {MAX_PACKET_SIZE}\n"
        f"listener {port} 127.0.0.1\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        # As root, mosquitto would drop to its own user, which cannot read these 0600 files.
        + (f"user {_user()}\n" if os.geteuid() == 0 else "")
    )
    return BrokerFiles(conf, passwords)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
