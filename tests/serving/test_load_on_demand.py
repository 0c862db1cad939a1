"""On-demand loading (`adapter-serve --load-on-demand`) over a real localhost channel: a
Predict (own proto and KServe v2) for an adapter that is not loaded but is in the registry
loads it through the lifecycle's one load path; unknown names are NOT_FOUND naming the
field, a corrupted artifact DATA_LOSS with nothing cached; concurrent requests load it once;
a slow load does not hold up other adapters' requests. Without the flag the server answers
NOT_FOUND as before.

A registry of its own (module scope): the `broken` artifact's blob is corrupted on disk,
`foreign` was trained on another backbone.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from kserve_helpers import infer
from serving_helpers import RECIPES, publish_recipes, random_adapter, request_for, tiny_backbone

from adapters_registry import Registry
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact


@pytest.fixture(scope="module")
def on_demand_registry(backbone, tmp_path_factory) -> str:
    """alpha v1/v2, beta, gamma (serving_helpers.RECIPES) and `broken`, whose shared
    weights (its own bytes: blobs are shared by content) fail their sha256."""
    base = tmp_path_factory.mktemp("on-demand")
    published = publish_recipes(backbone, base)
    registry = Registry(published.root)
    broken = random_adapter(backbone, RECIPES["gamma"][0], ["vqa"], 77)
    write_artifact(base / "broken", broken, backbone, {})
    registry.publish(base / "broken", "broken")
    info = registry.resolve("broken:1")
    sha = {record.path: record.sha256 for record in info.files()}["shared.safetensors"]
    blob = Path(registry.storage.path(f"blobs/sha256/{sha}"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    foreign = tiny_backbone(seed=1)  # other weights: another fingerprint
    write_artifact(base / "foreign", random_adapter(foreign, RECIPES["gamma"][0], ["vqa"], 78),
                   foreign, {})
    registry.publish(base / "foreign", "foreign")
    return published.root


def start(backbone, root: str, **settings) -> Server:
    config = ServeConfig(registry=root, host="127.0.0.1", port=0, max_queue_delay_ms=2.0,
                         **settings)
    return Server(config, backbone=backbone).start()


@pytest.fixture
def on_demand(backbone, on_demand_registry):
    """A fresh on-demand server with nothing loaded (each test sees its own loads)."""
    server = start(backbone, on_demand_registry, load_on_demand=True)
    yield server
    server.stop(grace=5)


def stubs(server: Server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return (channel, inference_pb2_grpc.InferenceStub(channel),
            repository_pb2_grpc.RepositoryStub(channel))


def on_demand_loads(server: Server) -> float:
    return server.metrics.registry.get_sample_value(
        "vladapter_adapter_on_demand_loads_total") or 0.0


def count_reads(server: Server, name: str, gate: threading.Event | None = None) -> list[str]:
    """Record every registry read of `name`'s files (optionally waiting on `gate` first)."""
    reads: list[str] = []
    registry = server.store.registry
    original = registry.read_files

    def read_files(ref, **kwargs):
        if ref.split(":")[0] == name:
            reads.append(ref)
            if gate is not None:
                assert gate.wait(30)
        return original(ref, **kwargs)

    registry.read_files = read_files
    return reads


def test_predict_loads_an_adapter_that_is_not_loaded(on_demand):
    channel, inference, repository = stubs(on_demand)
    with channel:
        assert repository.Status(repository_pb2.StatusRequest()).adapters == []
        answer = inference.Predict(request_for("vqa", "alpha"), timeout=60)
        assert (answer.adapter_name, answer.adapter_version) == ("alpha", 2)  # the latest
        older = inference.Predict(request_for("vqa", "beta", version=1), timeout=60)
        assert (older.adapter_name, older.adapter_version) == ("beta", 1)
        status = repository.Status(repository_pb2.StatusRequest())
        assert {(a.name, a.version, a.state) for a in status.adapters} == \
            {("alpha", 2, "READY"), ("beta", 1, "READY")}
        inference.Predict(request_for("caption", "alpha"), timeout=60)  # loaded: no load
    assert on_demand_loads(on_demand) == 2


def test_kserve_model_infer_loads_an_adapter_that_is_not_loaded(on_demand):
    client = triton.InferenceServerClient(f"127.0.0.1:{on_demand.port}")
    try:
        _, _, version = infer(client, request_for("vqa", "gamma"))
    finally:
        client.close()
    assert version == "1" and on_demand.adapters.active() == {"gamma": 1}
    assert on_demand_loads(on_demand) == 1


def test_without_the_flag_an_adapter_not_loaded_stays_not_found(backbone, on_demand_registry):
    server = start(backbone, on_demand_registry)
    channel, inference, _ = stubs(server)
    try:
        with channel, pytest.raises(grpc.RpcError) as caught:
            inference.Predict(request_for("vqa", "alpha"), timeout=60)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not loaded" in caught.value.details()
        assert server.adapters.active() == {}
    finally:
        server.stop(grace=5)


def test_an_unknown_adapter_is_not_found_naming_the_field(on_demand):
    channel, inference, _ = stubs(on_demand)
    with channel:
        for message in (request_for("vqa", "nobody"), request_for("vqa", "alpha", version=9)):
            with pytest.raises(grpc.RpcError) as caught:
                inference.Predict(message, timeout=60)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "adapter.name" in caught.value.details()
    assert on_demand.adapters.active() == {} and on_demand_loads(on_demand) == 0


def test_a_corrupted_artifact_is_data_loss_and_nothing_is_cached(on_demand):
    reads = count_reads(on_demand, "broken")
    channel, inference, _ = stubs(on_demand)
    with channel:
        for attempt in (1, 2):
            with pytest.raises(grpc.RpcError) as caught:
                inference.Predict(request_for("vqa", "broken"), timeout=60)
            assert caught.value.code() == grpc.StatusCode.DATA_LOSS
            assert "sha256" in caught.value.details()
            assert len(reads) == attempt  # the failed load left nothing to hit
    assert on_demand.store.entry(("broken", 1)) is None
    assert on_demand.adapters.active() == {} and on_demand_loads(on_demand) == 0


def test_concurrent_predicts_for_one_unloaded_adapter_load_it_once(on_demand):
    gate = threading.Event()
    reads = count_reads(on_demand, "beta", gate)
    channel, inference, _ = stubs(on_demand)
    with channel, ThreadPoolExecutor(6) as pool:
        calls = [pool.submit(inference.Predict, request_for("vqa", "beta", seed=i), timeout=60)
                 for i in range(6)]
        gate.set()
        answers = [call.result() for call in calls]
    assert {(a.adapter_name, a.adapter_version) for a in answers} == {("beta", 1)}
    assert reads == ["beta:1"] and on_demand_loads(on_demand) == 1


def test_a_slow_on_demand_load_does_not_hold_up_other_adapters(on_demand):
    channel, inference, _ = stubs(on_demand)
    with channel:
        inference.Predict(request_for("vqa", "alpha"), timeout=60)  # alpha is loaded
        gate = threading.Event()
        count_reads(on_demand, "gamma", gate)
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(inference.Predict, request_for("vqa", "gamma"), timeout=60)
            try:
                for seed in range(3):  # answered while gamma's registry read is held
                    answer = inference.Predict(request_for("caption", "alpha", seed=seed),
                                               timeout=30)
                    assert answer.adapter_name == "alpha"
                assert not slow.done()
            finally:
                gate.set()
            assert slow.result().adapter_name == "gamma"


def test_host_adapters_bounds_the_servers_host_tier(backbone, on_demand_registry):
    server = start(backbone, on_demand_registry, load_on_demand=True, host_adapters=1)
    channel, inference, _ = stubs(server)
    try:
        with channel:
            for name in ("alpha", "beta", "alpha"):
                assert inference.Predict(request_for("vqa", name), timeout=60).adapter_name \
                    == name
        assert server.adapters.active() == {"alpha": 2}  # beta left; alpha came back
        evictions = server.metrics.registry.get_sample_value(
            "vladapter_cache_events_total", {"tier": "host", "event": "eviction"})
        assert evictions == 2 and on_demand_loads(server) == 3
    finally:
        server.stop(grace=5)


def test_kserve_model_ready_reports_what_model_infer_would_load_without_loading(on_demand):
    reads = count_reads(on_demand, "gamma")
    client = triton.InferenceServerClient(f"127.0.0.1:{on_demand.port}")
    try:
        assert client.is_model_ready("gamma") and client.is_model_ready("alpha", "1")
        assert client.get_model_metadata("alpha", as_json=True)["versions"] == ["2"]
        assert client.get_model_metadata("alpha", "1", as_json=True)["versions"] == ["1"]
        config = client.get_model_config("gamma", as_json=True)["config"]
        assert config["parameters"]["tasks"]["string_value"] == "gqa,how2qa,tvc,vqa,yc2c"
        for name, version in (("nobody", ""), ("alpha", "9"), ("foreign", ""), ("alpha", "x")):
            assert not client.is_model_ready(name, version)
        with pytest.raises(triton.InferenceServerException) as caught:
            client.get_model_metadata("nobody")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        assert "'nobody'" in caught.value.message()
        with pytest.raises(triton.InferenceServerException) as caught:
            client.get_model_metadata("foreign")
        assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert reads == [] and on_demand.adapters.active() == {}  # nothing loaded
        _, _, version = infer(client, request_for("vqa", "gamma"))
        assert version == "1" and client.is_model_ready("gamma", "1")
    finally:
        client.close()
    assert reads == ["gamma:1"] and on_demand_loads(on_demand) == 1


def errors(server: Server, code: str) -> float:
    return server.metrics.registry.get_sample_value("vladapter_errors_total",
                                                    {"code": code}) or 0.0



def soon(condition, seconds: float = 30.0) -> bool:
    """Whether `condition()` holds within `seconds` (polled every 0.1 s): for what another
    thread of the server does after the call under test returned."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        threading.Event().wait(0.1)
    return True


def check_one_shared_load(server, reads: list[str], answer) -> None:
    """The patient request got beta:1 from the one registry read both calls shared, and
    the load stayed cached after the other call stopped waiting."""
    assert (answer.adapter_name, answer.adapter_version) == ("beta", 1)
    assert reads == ["beta:1"] and on_demand_loads(server) == 1
    assert server.store.entry(("beta", 1)) is not None

def test_a_deadline_that_passes_during_an_on_demand_load_ends_only_that_wait(on_demand):
    gate = threading.Event()
    reads = count_reads(on_demand, "beta", gate)  # beta's registry read waits for the gate
    channel, inference, _ = stubs(on_demand)
    with channel, ThreadPoolExecutor(1) as pool:
        patient = pool.submit(inference.Predict, request_for("vqa", "beta"), timeout=120)
        try:
            with pytest.raises(grpc.RpcError) as caught:
                inference.Predict(request_for("vqa", "beta", seed=1), timeout=2.0)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server ended the impatient call while the load is still held at the gate.
            assert soon(lambda: errors(on_demand, "DEADLINE_EXCEEDED") == 1)
            assert not patient.done()
        finally:
            gate.set()
        answer = patient.result()
    check_one_shared_load(on_demand, reads, answer)


def test_a_call_cancelled_during_an_on_demand_load_ends_only_that_wait(on_demand):
    gate = threading.Event()
    reads = count_reads(on_demand, "beta", gate)  # beta's registry read waits for the gate
    channel, inference, _ = stubs(on_demand)
    with channel, ThreadPoolExecutor(1) as pool:
        cancelled = inference.Predict.future(request_for("vqa", "beta", seed=1), timeout=120)
        try:
            soon(lambda: reads)  # its server thread started the load and waits on it
            patient = pool.submit(inference.Predict, request_for("vqa", "beta"), timeout=120)
            assert reads == ["beta:1"] and cancelled.cancel()
            # The server thread of the cancelled call returned while the load is held.
            assert soon(lambda: errors(on_demand, "CANCELLED") == 1)
            assert not patient.done()
        finally:
            gate.set()
        answer = patient.result()
    check_one_shared_load(on_demand, reads, answer)
