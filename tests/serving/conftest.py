"""Serving fixtures: a tiny backbone, a registry of real artifacts (alpha v1/v2, beta,
gamma, alien), a running server on a free localhost port and its stubs.

The backbone is shared by the server and the oracle; its adapter hooks hold per-call
state, so oracle calls run only while the server has nothing in flight.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from serving_helpers import (
    RECIPES,
    VISION_MODEL,
    Published,
    publish_recipes,
    random_adapter,
    start_server,
    tiny_backbone,
)
from tritonclient.grpc import service_pb2_grpc

from adapters_registry import Registry
from modeling.backbone import VLBackbone
from serving.protos import inference_pb2_grpc, repository_pb2_grpc
from training.artifact import write_artifact


@pytest.fixture(scope="session")
def backbone() -> VLBackbone:
    return tiny_backbone()


@pytest.fixture(scope="session")
def published(backbone, tmp_path_factory) -> Published:
    """A registry with alpha v1/v2 (adapter + LayerNorms), beta (LoRA + prompts), gamma
    (prefixes), and `alien` trained on another backbone (fingerprint mismatch)."""
    base = tmp_path_factory.mktemp("registry")
    published = publish_recipes(backbone, base)
    registry = Registry(published.root)
    other = tiny_backbone(seed=1)
    alien = random_adapter(other, RECIPES["gamma"][0], ["vqa"], 41)
    write_artifact(base / "alien", alien, other, {})
    registry.publish(base / "alien", "alien")
    return published


@pytest.fixture(scope="module")
def server(backbone, published):
    running = start_server(backbone, published, max_queue_delay_ms=20.0)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def vision_server(backbone, published):
    """A server that also hosts the tower as the KServe model `VISION_MODEL`."""
    running = start_server(backbone, published, serve_vision_model=VISION_MODEL)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture(scope="module")
def inference(channel):
    return inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture(scope="module")
def kserve(channel):
    """The raw KServe v2 stub, for requests tritonclient cannot build."""
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def repository(channel):
    return repository_pb2_grpc.RepositoryStub(channel)


@pytest.fixture(scope="module")
def health_stub(channel):
    return health_pb2_grpc.HealthStub(channel)
