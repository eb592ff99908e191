"""``python -m coordinator`` and the ``coordinator`` command's entry point.

``coordinator run`` records SIGTERM and SIGINT from here on (``rebuilder._stopsignals``), before
the service's imports; then ``coordinator.cli.main`` runs.
"""

from __future__ import annotations

import sys

from rebuilder._stopsignals import catch_if_serving, ignore_until_exit


def main() -> int:
    catch_if_serving(sys.argv[1:])
    from coordinator.cli import main as cli_main  # the heavy imports, stop signals caught

    try:
        return cli_main()
    finally:
        ignore_until_exit()  # a stop signal during the interpreter's exit changes nothing


if __name__ == "__main__":  # worker processes (spawn) import this module too
    sys.exit(main())
