"""`adapter-serve`: the gRPC server over one resident backbone (see serving/server.py).

    adapter-serve --registry PATH --backbone PATH|PRESET --load NAME[@ALIAS],... --port 50051
                  [--metrics-port N] [--tls-cert F --tls-key F] [--token-file F]
                  [--max-batch N --max-queue-delay-ms MS --cache-bytes B ...] [--config YAML]
                  [--vision-backend torch|onnxruntime|triton --onnx-path F
                   --triton-url HOST:PORT --triton-model NAME] [--serve-vision-model [NAME]]
    adapter-serve --ray [--replicas N | --min-replicas A --max-replicas B] [--ray-address ADDR]
                  [--replica-cpus C --replica-gpus G] ...      many replicas on Ray Serve
    adapter-serve export-onnx --backbone PATH|PRESET --out clip_vision.onnx

The same port serves `vladapter.v1.Inference` / `Repository` and KServe v2
(`inference.GRPCInferenceService`, see docs/kserve.md). With `--ray` that port is Ray
Serve's gRPC proxy in front of N replicas of this server (serving.fleet, README "Many
replicas").

Exit codes: 0 after a clean shutdown (SIGTERM / SIGINT), 2 for a bad setting or a start
that fails (one line on stderr naming why).
"""

from __future__ import annotations

import argparse
import logging
import sys

from modeling.cli_parser import OneLineParser
from serving.config import ServeConfig, add_arguments, from_args


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="adapter-serve",
        description="Serve many adapters over one resident VL backbone (gRPC): mixed-adapter "
                    "batching, a tiered adapter cache and hot-swap.",
        epilog="`adapter-serve export-onnx --help`: export the CLIP tower to ONNX.")
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return parser


def _run(config: ServeConfig) -> int:
    """Serve in this process, or deploy a fleet on Ray Serve with `--ray`."""
    if not config.ray:
        from serving.server import serve  # heavy imports (torch) after --help

        return serve(config)
    try:
        from serving.fleet.app import serve_fleet
    except ImportError as exc:
        raise ValueError(f"--ray needs Ray Serve ({exc}); install it with "
                         "pip install 'vladapter[ray]'") from None
    return serve_fleet(config)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export-onnx"]:
        from serving.onnx_export import main as export_onnx

        return export_onnx(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    del args.log_level
    try:
        config = from_args(args)
        return _run(config)
    except (ValueError, OSError) as exc:
        print(f"adapter-serve: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # registry errors and the like: one line, not a traceback
        print(f"adapter-serve: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
