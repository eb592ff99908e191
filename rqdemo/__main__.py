"""``python -m rqdemo [--once] [--state DIR]``: the demo network (``rqdemo.demo``)."""

import sys

from rqdemo.demo import main

sys.exit(main())
