"""The generated gRPC modules (serving/proto_gen, from proto/ by `python -m serving.gen_proto`).

grpcio-tools writes absolute imports (`from vladapter.v1 import ...`), so the generated
folder goes on sys.path once, here; everything else imports the modules from this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

_GENERATED = str(Path(__file__).resolve().parent / "proto_gen")
if _GENERATED not in sys.path:
    sys.path.insert(0, _GENERATED)

from vladapter.v1 import (  # noqa: E402  (needs the path above)
    inference_pb2,
    inference_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
)

__all__ = ["inference_pb2", "inference_pb2_grpc", "repository_pb2", "repository_pb2_grpc"]
