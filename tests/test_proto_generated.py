"""The checked-in gRPC code is what grpcio-tools 1.81.1 generates from proto/, the server
imports that code, and every rpc the .proto files declare is implemented by our servicers."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.gen_proto import OUT_DIR, PROTO_DIR, main
from serving.kserve import KServeServicer
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.servicer import InferenceServicer, RepositoryServicer

# (our servicer, the generated base whose methods answer UNIMPLEMENTED, the file's descriptor)
SERVICERS = {
    "Inference": (InferenceServicer, inference_pb2_grpc.InferenceServicer, inference_pb2),
    "Repository": (RepositoryServicer, repository_pb2_grpc.RepositoryServicer, repository_pb2),
    "GRPCInferenceService": (KServeServicer,
                             service_pb2_grpc.GRPCInferenceServiceServicer, service_pb2),
}


def test_generated_code_matches_the_proto_files():
    assert version("grpcio-tools") == "1.81.1"
    assert main(["--check"]) == 0


def _declared_rpcs() -> dict[str, set[str]]:
    """service name -> rpc names, read from the .proto sources' text."""
    services = {}
    for path in PROTO_DIR.rglob("*.proto"):
        text = re.sub(r"//[^\n]*", "", path.read_text())
        for name, body in re.findall(r"service\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
            services[name] = set(re.findall(r"rpc\s+(\w+)\s*\(", body))
    return services


def test_the_server_imports_the_generated_code_of_the_proto_sources():
    """Not another `vladapter.v1` found earlier on sys.path, nor a stale copy."""
    declared = _declared_rpcs()
    assert set(declared) == {"Inference", "Repository"}
    for module in (inference_pb2, repository_pb2):
        assert Path(module.__file__).resolve().is_relative_to(OUT_DIR)
    for service, rpcs in declared.items():
        descriptor = SERVICERS[service][2].DESCRIPTOR.services_by_name[service]
        assert {m.name for m in descriptor.methods} == rpcs


@pytest.mark.parametrize("service", SERVICERS)
def test_every_rpc_of_each_served_service_is_implemented_by_our_servicer(service):
    ours, generated, module = SERVICERS[service]
    methods = [m.name for m in module.DESCRIPTOR.services_by_name[service].methods]
    assert methods  # guard: the descriptor lists the service's rpcs
    missing = [m for m in methods if getattr(ours, m) is getattr(generated, m)]
    assert not missing, f"{ours.__name__} leaves {missing} to the generated UNIMPLEMENTED stub"
