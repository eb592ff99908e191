"""Bring a mosquitto password file in line with the wanted accounts.

Run by the mqtt_broker role as `python3 -c <this> PASSWORD_FILE` with the accounts as JSON on
stdin ({"user": "password", ...}), so that no password appears in a process list or a log.
Existing entries whose hash already matches are left alone (the role stays idempotent, since
mosquitto_passwd salts every new hash); others are written with mosquitto_passwd, and accounts
that are no longer wanted are deleted. Prints {"added": [...], "updated": [...], "removed": [...]}.
"""

import base64
import hashlib
import hmac
import json
import subprocess
import sys


def read_entries(path: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                user, _, digest = line.partition(":")
                entries[user] = digest
    return entries


def hash_matches(digest: str, password: str) -> bool:
    """True when `digest` (mosquitto's $7$ PBKDF2-SHA512 or $6$ SHA512 form) is of `password`."""
    parts = digest.split("$")
    secret = password.encode("utf-8")
    try:
        if len(parts) == 5 and parts[1] == "7":
            salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", secret, salt, int(parts[2]), len(want))
        elif len(parts) == 4 and parts[1] == "6":
            salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.sha512(secret + salt).digest()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def main() -> None:
    path = sys.argv[1]
    wanted = json.load(sys.stdin)
    for user, password in wanted.items():
        if not password or any(c in password for c in "\r\n\0"):
            sys.exit(f"MQTT password for account {user!r} is empty or contains a line break")
        if not user or any(c in user for c in ":\r\n\0 #+/"):
            sys.exit(f"MQTT account name {user!r} is not allowed in a mosquitto password file")
    current = read_entries(path)
    report: dict[str, list[str]] = {"added": [], "updated": [], "removed": []}
    for user in sorted(wanted):
        password = wanted[user]
        if user in current and hash_matches(current[user], password):
            continue
        subprocess.run(
            ["mosquitto_passwd", path, user],
            input=f"{password}\n{password}\n",
            text=True,
            check=True,
            capture_output=True,
        )
        report["updated" if user in current else "added"].append(user)
    for user in sorted(set(current) - set(wanted)):
        subprocess.run(["mosquitto_passwd", "-D", path, user], check=True, capture_output=True)
        report["removed"].append(user)
    print(json.dumps(report))


main()
