"""One corrupt version record hides no other version from Repository.Index or KServe's
RepositoryIndex: both list it, marked with the registry's problem as its reason."""

from __future__ import annotations

import shutil

import grpc
import pytest
from serving_helpers import Published, start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.protos import repository_pb2, repository_pb2_grpc


@pytest.fixture(scope="module")
def channel(backbone, published, tmp_path_factory):
    """A server on a copy of the published registry whose alpha:1 record is `{not json`."""
    root = tmp_path_factory.mktemp("corrupt") / "store"
    shutil.copytree(published.root, root)
    (root / "adapters" / "alpha" / "versions" / "1.json").write_text("{not json")
    running = start_server(backbone, Published(str(root), published.models))
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as chan:
        yield chan
    running.stop(grace=5)


def test_repository_index_marks_the_corrupt_version_and_lists_the_rest(channel):
    index = repository_pb2_grpc.RepositoryStub(channel).Index(repository_pb2.IndexRequest(),
                                                               timeout=10).adapters
    states = {(a.name, a.version): a for a in index}
    assert set(states) == {("alpha", 1), ("alpha", 2), ("beta", 1), ("gamma", 1), ("alien", 1)}
    assert states[("alpha", 2)].state == "READY" and states[("beta", 1)].state == "READY"
    broken = states[("alpha", 1)]
    assert broken.state == "UNAVAILABLE" and "alpha:1" in broken.reason
    assert "corrupt" in broken.reason


def test_kserve_repository_index_marks_the_corrupt_version_and_lists_the_rest(channel):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    models = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10).models
    by_key = {(m.name, m.version): m for m in models}
    assert {("alpha", "1"), ("alpha", "2"), ("beta", "1"), ("gamma", "1")} <= set(by_key)
    assert by_key[("alpha", "2")].state == "READY"
    assert "corrupt" in by_key[("alpha", "1")].reason
