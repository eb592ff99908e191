"""``python -m rqdemo.testrepo build DEST [--extra N]`` / ``serve DEST [--port N]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from rqdemo.testrepo import build_test_repository, default_packages, serve_forever


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rqdemo.testrepo")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or copy from the cache) the test repository")
    b.add_argument("dest", type=Path)
    b.add_argument("--extra", type=int, default=0, help="extra reproducible packages")
    s = sub.add_parser("serve", help="serve a built repository over HTTP on 127.0.0.1")
    s.add_argument("dest", type=Path)
    s.add_argument("--port", type=int, default=8400)
    args = parser.parse_args(argv)
    if args.command == "build":
        repo = build_test_repository(args.dest, default_packages(args.extra))
        state = "from cache" if repo.cached else "built"
        print(f"{repo.path}: {len(repo.packages)} packages ({state})")
        for p in repo.packages:
            for d in p.debs:
                print(f"  {p.kind:15} {d.name}  sha256:{d.sha256}")
        return 0
    if not (args.dest / "dists").is_dir():
        print(f"{args.dest} holds no repository; run `build {args.dest}` first", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.dest, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
