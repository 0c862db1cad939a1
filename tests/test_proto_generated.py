"""The checked-in gRPC code is what grpcio-tools 1.81.1 generates from proto/."""

from __future__ import annotations

from importlib.metadata import version

from serving.gen_proto import main
from serving.protos import inference_pb2


def test_generated_code_matches_the_proto_files():
    assert version("grpcio-tools") == "1.81.1"
    assert main(["--check"]) == 0


def test_generated_messages_import_and_round_trip():
    request = inference_pb2.PredictRequest(task="vqa", text="what colour?")
    assert inference_pb2.PredictRequest.FromString(request.SerializeToString()) == request
