"""`adapter-client`: terminal client of the gRPC server (serving issue). Not built yet."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapter-client",
        description="Send requests to adapter-serve. Not built yet: it lands with the server.")
    parser.add_argument("--target", default="localhost:50051", help="server address")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("adapter-client: error: the client is not built yet (see README, 'Status')",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
