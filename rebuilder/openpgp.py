"""OpenPGP signature checks with the real ``gpgv``, against one keyring file (APT's Signed-By).

Never a hand-written OpenPGP parser: ``gpgv`` decides, and its machine-readable status lines say
who signed. What is returned is what ``gpgv`` says was signed (for a clearsigned file, its own
output, so text outside the signed block can never be mistaken for signed text)::

    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    signed = verify_clearsigned(inrelease_bytes, keyring, what="InRelease")
    signed.content, signed.fingerprint          # the signed bytes, the primary key fingerprint
    fpr = verify_detached(release, release_gpg, keyring, what="Release.gpg")

Blocking (a subprocess); from async code use ``asyncio.to_thread``. Failures are
``BadDataError`` naming what was checked, the keyring and what gpgv reported.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from verifier.errors import BadDataError

__all__ = ["GPGV_TIMEOUT_S", "Signed", "SourcePolicy", "check_dsc_signature", "gpgv_available",
           "is_clearsigned", "verify_clearsigned", "verify_detached"]

GPGV_TIMEOUT_S = 120.0
MAX_SIGNED_BYTES = 64 * 1024 * 1024
# Digest algorithms (RFC 4880 9.4) APT refuses since 2017: MD5 (1), SHA-1 (2), RIPEMD-160 (3).
_WEAK_DIGESTS = {"1", "2", "3"}


@dataclass(frozen=True)
class Signed:
    content: bytes  # exactly what the signature covers
    fingerprint: str  # primary key fingerprint of the (first) good signature, uppercase hex


def gpgv_available() -> bool:
    return shutil.which("gpgv") is not None


def is_clearsigned(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")


def _run_gpgv(args: list[str], keyring: Path, what: str, tmp: Path) -> str:
    if not keyring.is_file():
        raise BadDataError(what, f"keyring {keyring} does not exist or is not a file")
    home = tmp / "home"
    home.mkdir(mode=0o700)
    try:
        result = subprocess.run(
            ["gpgv", "--homedir", str(home), "--status-fd", "1", "--keyring", str(keyring), *args],
            capture_output=True, timeout=GPGV_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise BadDataError(what, "gpgv is not installed (Debian package gpgv)") from e
    except subprocess.TimeoutExpired as e:
        raise BadDataError(what, f"gpgv did not finish within {GPGV_TIMEOUT_S:.0f}s") from e
    # gpgv exits non-zero when any signature cannot be checked (a key not in the keyring), even
    # when another is good: as APT does, decide on its status lines, one per signature
    return _good_fingerprint(result.stdout.decode("utf-8", "replace"), keyring, what)


def _good_fingerprint(status: str, keyring: Path, what: str) -> str:
    """The primary key fingerprint of the first good signature in gpgv's status lines, or why
    there is none. A file may carry several signatures (Debian's InRelease has two): one good
    one is enough, as for APT, but a BAD one refuses the file (its content was modified)."""
    blocks: list[dict[str, list[str]]] = []
    for line in status.splitlines():
        parts = line.split()[1:] if line.startswith("[GNUPG:] ") else []
        if not parts:
            continue
        if parts[0] == "NEWSIG" or not blocks:
            blocks.append({})
        blocks[-1][parts[0]] = parts[1:]
    reasons: list[str] = []
    good: list[str] = []
    for kinds in blocks:
        if "BADSIG" in kinds:
            raise BadDataError(what, f"signature by key {kinds['BADSIG'][0]} is BAD: the "
                                     "signed content was modified")
        if "GOODSIG" in kinds and "VALIDSIG" in kinds:
            fields = kinds["VALIDSIG"]
            if len(fields) >= 8 and fields[7] in _WEAK_DIGESTS:
                reasons.append(f"signed with a weak digest algorithm ({fields[7]})")
                continue
            good.append((fields[-1] if len(fields) >= 10 else fields[0]).upper())
            continue
        for bad, why in (("EXPKEYSIG", "has expired"), ("REVKEYSIG", "was revoked"),
                         ("EXPSIG", "made a signature that has expired")):
            if bad in kinds:
                reasons.append(f"signing key {kinds[bad][0]} {why} (keyring {keyring})")
        if "NO_PUBKEY" in kinds or kinds.get("ERRSIG", [""])[-1:] == ["9"]:
            keyid = (kinds.get("NO_PUBKEY") or kinds["ERRSIG"])[0]
            reasons.append(f"signed by key {keyid}, which is not in keyring {keyring}: signed by "
                           "another key, or the keyring is not this repository's")
    if good:
        return good[0]
    if reasons:
        raise BadDataError(what, "; ".join(reasons))
    if not blocks or any("NODATA" in k for k in blocks):
        raise BadDataError(what, "holds no OpenPGP signature")
    seen = sorted({k for b in blocks for k in b})
    raise BadDataError(what, f"signature does not verify under keyring {keyring}: "
                             f"gpgv said {' '.join(seen)}")


def verify_clearsigned(data: bytes, keyring: Path, what: str) -> Signed:
    """Verify a clearsigned file (InRelease, .dsc); return the signed text as gpgv output it."""
    if len(data) > MAX_SIGNED_BYTES:
        raise BadDataError(what, f"{len(data)} bytes, limit {MAX_SIGNED_BYTES}")
    if not is_clearsigned(data):
        raise BadDataError(what, "is not OpenPGP clearsigned")
    with tempfile.TemporaryDirectory(prefix="rq-gpgv-") as d:
        tmp = Path(d)
        (tmp / "signed").write_bytes(data)
        out = tmp / "content"
        fpr = _run_gpgv(["--output", str(out), str(tmp / "signed")], keyring, what, tmp)
        return Signed(out.read_bytes(), fpr)


def verify_detached(data: bytes, signature: bytes, keyring: Path, what: str) -> str:
    """Verify a detached signature (Release.gpg over Release); return the signer fingerprint."""
    if len(data) > MAX_SIGNED_BYTES or len(signature) > 1024 * 1024:
        raise BadDataError(what, "signed file or signature is over the size limit")
    with tempfile.TemporaryDirectory(prefix="rq-gpgv-") as d:
        tmp = Path(d)
        (tmp / "data").write_bytes(data)
        (tmp / "sig").write_bytes(signature)
        return _run_gpgv([str(tmp / "sig"), str(tmp / "data")], keyring, what, tmp)


@dataclass(frozen=True)
class SourcePolicy:
    """How a repository's .dsc signatures are checked (``uploader_keyring``,
    ``require_signed_source`` in docs/configuration.md)."""

    keyring: Path | None = None
    require_signed: bool = False


def check_dsc_signature(data: bytes, policy: SourcePolicy, what: str) -> tuple[Signed | None, str]:
    """The verified signature of a .dsc when there is one to check, and a line for the build log.

    Raises ``BadDataError`` when ``policy.require_signed`` and the .dsc is unsigned or its
    signature does not verify under the uploader keyring.
    """
    if not is_clearsigned(data):
        if policy.require_signed:
            raise BadDataError(what, "is not OpenPGP-signed, and require_signed_source = true")
        return None, f"{what} is not signed"
    if policy.keyring is None:
        return None, f"{what} is signed; no uploader_keyring configured, signature not checked"
    try:
        signed = verify_clearsigned(data, policy.keyring, what)
    except BadDataError as e:
        if policy.require_signed:
            raise BadDataError(what, f"{e.reason} (require_signed_source = true)") from e
        return None, f"{what}: signature not verified: {e.reason}"
    return signed, f"{what} signed by {signed.fingerprint} (uploader keyring {policy.keyring})"
