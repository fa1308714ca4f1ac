"""`gpupool` command line: `simulate` (trace what-if), `status` (the pool), `explain` (why a pod waits)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from gpupool import cluster_cli
    from gpupool.simulator import cli as simulate_cli

    parser = argparse.ArgumentParser(prog="gpupool", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    simulate_cli.add_parser(sub)
    cluster_cli.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
