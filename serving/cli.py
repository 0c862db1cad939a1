"""`adapter-serve`: the gRPC server (serving issue). Only its command line exists so far."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapter-serve",
        description="Serve many adapters over one resident VL backbone (gRPC). "
                    "Not built yet: the server lands with the serving issue.")
    parser.add_argument("--registry", help="registry root (path or fsspec URL)")
    parser.add_argument("--backbone", help="backbone folder or preset name")
    parser.add_argument("--port", type=int, default=50051)
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("adapter-serve: error: the server is not built yet (see README, 'Status')",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
