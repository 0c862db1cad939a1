"""Generate `serving/proto_gen/` from `proto/` with grpcio-tools (pinned 1.81.1).

    python -m serving.gen_proto            # rewrite the checked-in code
    python -m serving.gen_proto --check    # exit 1 when it differs from the .proto files
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "serving" / "proto_gen"


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}",
                        f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                        f"--grpc_python_out={out_dir}", *protos])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    for package in {p.parent for p in out_dir.rglob("*_pb2.py")} | {out_dir}:
        (package / "__init__.py").touch()


def differences(generated: Path, checked_in: Path) -> list[str]:
    names = {p.relative_to(generated) for p in generated.rglob("*") if p.is_file()}
    names |= {p.relative_to(checked_in) for p in checked_in.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    return sorted(str(n) for n in names if not (generated / n).is_file()
                  or not (checked_in / n).is_file()
                  or not filecmp.cmp(generated / n, checked_in / n, shallow=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if not args.check:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = differences(Path(tmp), OUT_DIR)
    if stale:
        print(f"serving/proto_gen is stale: {stale}; run python -m serving.gen_proto",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
