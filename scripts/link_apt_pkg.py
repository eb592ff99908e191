"""Make python3-apt's ``apt_pkg`` importable in the virtualenv (``make setup`` runs this).

``apt_pkg`` (apt's own C++ deb822 parser) is only packaged for Debian's system Python, and a
virtualenv on another interpreter (e.g. pyenv) does not see /usr/lib/python3/dist-packages. The
extension is linked into the venv only when its ABI tag is the venv interpreter's, never the
rest of the system's packages. Without it the node falls back to python-debian's parser, about
25x slower on Debian's index (docs/rebuild-pipeline.md).
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

SYSTEM = Path("/usr/lib/python3/dist-packages")


def main() -> int:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")  # e.g. .cpython-311-x86_64-linux-gnu.so
    source = SYSTEM / f"apt_pkg{suffix}"
    try:
        import apt_pkg  # noqa: F401  # already importable: nothing to do
    except ImportError:
        pass
    else:
        print("apt_pkg: already importable")
        return 0
    if not source.exists():
        print(f"apt_pkg: {source} not found (python3-apt for this Python version); "
              "indexes will be parsed by python-debian (slower)")
        return 0
    target = Path(site.getsitepackages()[0]) / source.name
    target.unlink(missing_ok=True)
    target.symlink_to(source)
    print(f"apt_pkg: linked {source} into {target.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
