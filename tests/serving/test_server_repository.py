"""The Repository service: Index, Load by version and alias, Status, Pin / Unpin, Unload;
what `latest` and "no version" mean to Predict; the references `--load` takes."""

from __future__ import annotations

import grpc
import pytest
from serving_helpers import request_for, start_server

from adapters_registry import InvalidName
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.server import Server


@pytest.fixture(scope="module")
def stubs(backbone, published):
    running = start_server(backbone, published)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield (inference_pb2_grpc.InferenceStub(channel),
               repository_pb2_grpc.RepositoryStub(channel))
    running.stop(grace=5)


def _load(repo, name, version=None, alias=None):
    request = repository_pb2.LoadRequest()
    request.adapter.name = name
    if version is not None:
        request.adapter.version = version
    if alias is not None:
        request.adapter.alias = alias
    return repo.Load(request, timeout=30).adapter


def test_index_lists_every_version_with_its_state(stubs):
    index = stubs[1].Index(repository_pb2.IndexRequest(), timeout=10).adapters
    states = {(a.name, a.version): a.state for a in index}
    assert states == {("alpha", 1): "UNAVAILABLE", ("alpha", 2): "READY", ("beta", 1): "READY",
                      ("gamma", 1): "READY", ("alien", 1): "UNAVAILABLE"}
    ready = stubs[1].Index(repository_pb2.IndexRequest(ready_only=True), timeout=10).adapters
    assert {a.name for a in ready} == {"alpha", "beta", "gamma"}


def test_status_moves_from_host_to_device_on_first_use(stubs):
    inference, repo = stubs
    (state,) = repo.Status(repository_pb2.StatusRequest(name="gamma"), timeout=10).adapters
    assert (state.tier, state.in_flight, state.pinned) == ("host", 0, False)
    assert state.bytes > 0 and sorted(state.tasks) == ["gqa", "how2qa", "tvc", "vqa", "yc2c"]
    inference.Predict(request_for("gqa", "gamma"), timeout=30)
    (state,) = repo.Status(repository_pb2.StatusRequest(name="gamma"), timeout=10).adapters
    assert state.tier == "device" and state.last_used_unix > 0 and state.in_flight == 0


def test_load_by_version_then_alias_switches_what_requests_get(stubs):
    inference, repo = stubs
    assert _load(repo, "alpha", version=1).version == 1
    assert inference.Predict(request_for("vqa"), timeout=30).adapter_version == 1
    assert inference.Predict(request_for("vqa", version=2), timeout=30).adapter_version == 2
    assert _load(repo, "alpha", alias="latest").version == 2
    assert inference.Predict(request_for("vqa"), timeout=30).adapter_version == 2


def test_alias_latest_is_the_highest_version_and_no_selector_the_active_one(stubs):
    """`latest` means one thing everywhere, the registry's highest version not yanked:
    after a hot-swap back to version 1, a request with alias `latest` gets version 2, one
    that names no version (or an empty alias) the active version 1."""
    inference, repo = stubs
    latest, empty = request_for("vqa"), request_for("vqa")
    latest.adapter.alias, empty.adapter.alias = "latest", ""
    try:
        assert _load(repo, "alpha", version=1).version == 1
        assert inference.Predict(latest, timeout=30).adapter_version == 2
        assert inference.Predict(request_for("vqa"), timeout=30).adapter_version == 1
        assert inference.Predict(empty, timeout=30).adapter_version == 1
    finally:
        assert _load(repo, "alpha", version=2).version == 2


def test_pin_unpin_and_unload(stubs):
    inference, repo = stubs
    assert repo.Pin(repository_pb2.PinRequest(name="beta"), timeout=10).adapter.pinned
    assert not repo.Unpin(repository_pb2.PinRequest(name="beta"), timeout=10).adapter.pinned
    repo.Unload(repository_pb2.UnloadRequest(name="beta"), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        inference.Predict(request_for("vqa", "beta"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        repo.Unload(repository_pb2.UnloadRequest(name="beta"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert _load(repo, "beta").state == "READY"
    assert inference.Predict(request_for("vqa", "beta"), timeout=30).adapter_name == "beta"


def test_load_of_unknown_adapter_is_not_found(stubs):
    with pytest.raises(grpc.RpcError) as caught:
        _load(stubs[1], "nobody")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("ref", "words"), [
    ("alpha@", "invalid alias ''"), ("alpha:+2", "invalid version '+2'"),
    ("alpha:0", "invalid version '0'"), ("Alpha", "invalid name 'Alpha'")])
def test_malformed_load_references_at_start_are_refused_naming_the_part(backbone, published,
                                                                        ref, words):
    """`--load` references go through the registry's one parser (`parse_ref`): nothing
    malformed is loaded as something else (`alpha@` is not `alpha@latest`)."""
    config = ServeConfig(registry=published.root, host="127.0.0.1", port=0, load=(ref,))
    server = Server(config, backbone=backbone)
    try:
        with pytest.raises(InvalidName) as caught:
            server.start()
        assert words in str(caught.value)
        assert server.adapters.active() == {}
    finally:
        server.stop(grace=1)
