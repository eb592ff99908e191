"""``python -m coordinator``: the same as the ``coordinator`` command."""

import sys

from coordinator.cli import main

if __name__ == "__main__":  # worker processes (spawn) import this module too
    sys.exit(main())
