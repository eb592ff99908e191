"""Run every ``benchmarks/bench_*.py`` module's ``main(args) -> dict`` and print its figures.

Each benchmark measures its target and a baseline in the same run and reports the ratio, since
the machines are small and noisy. Results are also written to ``bench-results/<name>.json``.

    python -m benchmarks                 # all
    python -m benchmarks decision hash   # those whose module name contains a word
    python -m benchmarks --quick         # fewer iterations, for a smoke run
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import benchmarks


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("only", nargs="*", help="run modules whose name contains one of these")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    if args.only:
        names = [n for n in names if any(w in n for w in args.only)]
    out_dir = Path("bench-results")
    out_dir.mkdir(exist_ok=True)
    failed = 0
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}: {(module.__doc__ or '').strip().splitlines()[0]}", flush=True)
        t0 = time.monotonic()
        try:
            result = module.main(quick=args.quick)
        except Exception as e:  # one broken benchmark must not hide the others' figures
            print(f"   FAILED: {type(e).__name__}: {e}", flush=True)
            failed += 1
            continue
        for key, value in result.items():
            print(f"   {key}: {value}")
        print(f"   ({time.monotonic() - t0:.1f}s)", flush=True)
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
