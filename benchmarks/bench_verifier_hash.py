"""Hashing a large .deb: ``sha256_file`` vs ``openssl dgst -sha256`` on the same file.

A 1 GiB file (128 MiB with --quick) is written to a temporary directory and deleted afterwards.
Both hash it from the page cache, alternately; the best run of each is compared (target
throughput ratio >= 0.9). Peak RSS is measured in a fresh interpreter against one that only
imports the module, so the growth shown is what hashing itself costs (target: flat, ~1 MiB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024

_CHILD = """
import resource, sys
from pathlib import Path
from verifier.debian import sha256_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
digest = sha256_file(Path(sys.argv[1])) if sys.argv[2] == "hash" else ""
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(digest, before, after)
"""


def _child(path: Path, mode: str) -> tuple[str, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode], capture_output=True, text=True, check=True
    ).stdout.split()
    if mode == "hash":
        return out[0], int(out[1]), int(out[2])
    return "", int(out[0]), int(out[1])


def main(quick: bool = False) -> dict[str, object]:
    from verifier.debian import sha256_file

    size = (128 if quick else 1024) * MIB
    rounds = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="rq-bench-hash-") as d:
        path = Path(d) / "big.deb"
        block = os.urandom(MIB)
        with path.open("wb") as f:
            for i in range(size // MIB):
                f.write(block[:-8] + i.to_bytes(8, "big"))  # no two blocks alike
        ours, theirs = [], []
        digest_ours = digest_theirs = ""
        for _ in range(rounds):
            t0 = time.perf_counter()
            out = subprocess.run(
                ["openssl", "dgst", "-sha256", "-r", str(path)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            theirs.append(time.perf_counter() - t0)
            digest_theirs = out.split()[0]
            t0 = time.perf_counter()
            digest_ours = sha256_file(path)
            ours.append(time.perf_counter() - t0)
        assert digest_ours == digest_theirs, "sha256_file and openssl disagree"
        _, _, baseline_peak = _child(path, "import")
        _, _, hashing_peak = _child(path, "hash")
    ours_mbs = size / MIB / min(ours)
    theirs_mbs = size / MIB / min(theirs)
    return {
        "file_mib": size // MIB,
        "sha256_file_mib_s": round(ours_mbs),
        "openssl_mib_s": round(theirs_mbs),
        "throughput_ratio": round(ours_mbs / theirs_mbs, 3),
        "target_ratio": 0.9,
        "met": ours_mbs / theirs_mbs >= 0.9,
        "peak_rss_growth_kib": hashing_peak - baseline_peak,
    }


if __name__ == "__main__":
    print(main(quick=True))
