"""A 2-replica fleet that loads adapters on demand (`adapter-serve --ray --load-on-demand
--host-adapters N`), through Ray Serve's gRPC proxy: nothing is loaded at start; a routed
request loads its adapter on one replica, which keeps its later requests; a fleet-wide
change does not unload what a replica loaded on demand; Ray Serve's multiplexed table
follows the host tier.

One local cluster for the module (as test_fleet_ray.py, ~30 s on two cores).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import tritonclient.grpc as triton
from kserve_helpers import infer
from serving_helpers import request_for
from test_fleet_ray import Fleet, _free_port, _predict, running_fleet
from test_fleet_record import FakeRayContext

from serving.client import TIMEOUT_KEY
from serving.config import ServeConfig
from serving.fleet.replica import (
    AdapterReplica,
    CallEnded,
    ProxyContext,
    multiplexed_models,
    routed_adapter,
)
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.stack import build_stack


@pytest.fixture(scope="module")
def fleet(backbone, published, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet-on-demand-backbone")
    backbone.save_pretrained(folder)
    config = ServeConfig(registry=published.root, backbone=str(folder), load=(),
                         load_on_demand=True, host_adapters=3, port=_free_port(),
                         http_port=_free_port(), ray=True, replicas=2, replica_cpus=0.25,
                         max_queue_delay_ms=5.0, device_slots=2, grace_s=10.0,
                         fleet_sync_s=30.0)
    with running_fleet(config) as running:
        yield running


@pytest.fixture(scope="module")
def channel(fleet):
    with grpc.insecure_channel(fleet.target) as chan:
        yield chan


def on_demand_loads(fleet: Fleet) -> dict[str, float]:
    """Adapters each replica loaded on demand, once every replica has reported since now."""
    time.sleep(2.5)  # replicas report with each poll (<= 1 s)
    return {replica: report["stats"]["on_demand_loads"]
            for replica, report in fleet.wait_replicas(2)["replicas"].items()}


def test_multiplexed_table_follows_the_host_tier_on_demand():
    assert multiplexed_models(ServeConfig(load_on_demand=True, host_adapters=128,
                                          device_slots=32)) == 128
    assert multiplexed_models(ServeConfig(load_on_demand=True, device_slots=32)) == -1
    assert multiplexed_models(ServeConfig(host_adapters=128, device_slots=32)) == 32


def bare_replica(stack, pool: ThreadPoolExecutor) -> AdapterReplica:
    """An AdapterReplica without Ray: its parts by hand over `stack`, the multiplexed
    loader being its own fetch (Ray Serve's table and routing left out)."""
    replica = AdapterReplica.__new__(AdapterReplica)
    replica.stack, replica._pool, replica._auth = stack, pool, None
    replica._lock, replica._held, replica._answered = threading.Lock(), set(), Counter()
    replica._warm = replica._fetch_adapter
    return replica


def test_ray_serve_dropping_one_of_two_ids_of_a_version_keeps_it(backbone, published):
    """`alpha` and `alpha:2` are two ids of Ray Serve's table for one version: `__del__` of
    one (Ray Serve calls it when the table drops the id) keeps the host copy the other
    still routes to; the replica reports the ids it holds. Without Ray: the replica's
    multiplexed loader over a stack."""
    stack = build_stack(ServeConfig(registry=published.root, load_on_demand=True), backbone)
    with ThreadPoolExecutor(1) as pool:
        replica = bare_replica(stack, pool)
        try:
            loaded = {reference: asyncio.run(replica._fetch_adapter(reference))
                      for reference in ("alpha", "alpha:2")}
            assert {model.key for model in loaded.values()} == {("alpha", 2)}
            assert replica.stats()["multiplexed_ids"] == ["alpha", "alpha:2"]
            loaded["alpha"].__del__()
            assert replica.stats()["multiplexed_ids"] == ["alpha:2"]
            assert stack.adapters.active() == {"alpha": 2}
            assert stack.store.entry(("alpha", 2)) is not None
            loaded["alpha:2"].__del__()  # the last id: it leaves
            assert stack.adapters.active() == {} and stack.store.entry(("alpha", 2)) is None
            assert replica.stats()["multiplexed_ids"] == []
        finally:
            stack.store.close()


def _end_the_wait(loop: asyncio.AbstractEventLoop, replica: AdapterReplica, ending: str,
                  reads: list[str]) -> None:
    """Admit a Predict for `beta` on `replica` while beta's load is held, and end its wait:
    by the client's deadline (its `vladapter-timeout-s` metadata), answered
    DEADLINE_EXCEEDED naming the adapter, or by Ray Serve cancelling the call."""
    ray_context = FakeRayContext([(TIMEOUT_KEY, "0.5")] if ending == "deadline" else [])
    admit = loop.create_task(replica._admit("/vladapter.v1.Inference/Predict",
                                            request_for("vqa", "beta"),
                                            ProxyContext(ray_context)))
    if ending == "deadline":
        with pytest.raises(CallEnded):
            loop.run_until_complete(asyncio.wait_for(admit, 30))
        assert ray_context.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "adapter beta" in ray_context.details
        return
    for _ in range(300):  # the load started and is held
        if reads:
            break
        loop.run_until_complete(asyncio.sleep(0.1))
    admit.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(admit)


@pytest.mark.parametrize("ending", ["deadline", "cancelled"])
def test_a_replica_stops_waiting_for_a_load_the_client_gave_up_on(backbone, published,
                                                                    ending):
    """Ray Serve's multiplexed loader runs before the servicer: a request whose client's
    deadline passes, or whose call Ray Serve cancels, while its adapter's load is held
    stops waiting, and the load goes on and lands in the replica's multiplexed table (one
    registry read). Without Ray: the replica's admission step over a stack, the
    multiplexed loader being its fetch."""
    stack = build_stack(ServeConfig(registry=published.root, load_on_demand=True), backbone)
    gate, reads = threading.Event(), []
    read_files = stack.store.registry.read_files

    def held(ref, **kwargs):  # beta's registry read waits for the gate
        reads.append(ref)
        assert gate.wait(60)
        return read_files(ref, **kwargs)

    stack.store.registry.read_files = held
    loop = asyncio.new_event_loop()
    with ThreadPoolExecutor(2) as pool:
        replica = bare_replica(stack, pool)
        try:
            _end_the_wait(loop, replica, ending, reads)
            assert reads == ["beta:1"] and stack.adapters.active() == {}  # still held
        finally:
            gate.set()
        while asyncio.all_tasks(loop):  # the shared load, which nobody waits for now
            loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()
    try:
        assert stack.adapters.active() == {"beta": 1} and reads == ["beta:1"]
        assert replica.stats()["multiplexed_ids"] == ["beta"]
    finally:
        stack.store.close()


def test_one_replica_loads_an_adapter_on_demand_and_keeps_its_requests(fleet, channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    first, loader = _predict(stub, request_for("vqa", "beta"))
    assert (first.adapter_name, first.adapter_version) == ("beta", 1)
    time.sleep(1.0)  # replicas report their multiplexed ids every 0.1 s
    landed = Counter(_predict(stub, request_for("vqa", "beta", seed=seed))[1]
                     for seed in range(8))
    assert landed == Counter({loader: 8})
    loads = on_demand_loads(fleet)
    assert loads[loader] == 1 and sum(loads.values()) == 1, loads
    with pytest.raises(grpc.RpcError) as caught:
        _predict(stub, request_for("vqa", "nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "adapter.name" in caught.value.details()


def test_kserve_model_infer_loads_on_demand_through_the_proxy(fleet):
    client = triton.InferenceServerClient(fleet.target)
    try:
        _, _, version = infer(client, request_for("vqa", "gamma"),
                              headers={"multiplexed_model_id": "gamma"})
    finally:
        client.close()
    assert version == "1"


def test_a_fleet_change_leaves_what_a_replica_loaded_on_demand(fleet, channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    _, loader = _predict(stub, request_for("vqa", "beta"))
    before = on_demand_loads(fleet)
    repository = repository_pb2_grpc.RepositoryStub(channel)
    repository.Load(repository_pb2.LoadRequest(adapter=inference_pb2.AdapterRef(name="alpha")),
                    timeout=60)  # a new record: every replica converges to it
    answer, replica = _predict(stub, request_for("vqa", "beta", seed=5))
    assert (answer.adapter_name, replica) == ("beta", loader)
    assert on_demand_loads(fleet) == before  # beta stayed loaded: no second load


def test_ray_serves_unload_of_a_routed_adapter_releases_it_once():
    released: list[tuple[str, int]] = []
    routed = routed_adapter(("beta", 1), lambda *key: released.append(key))
    assert routed.key == ("beta", 1) and hasattr(routed, "__del__")
    routed.__del__()  # what Ray Serve's multiplexed table calls when it drops the id
    assert released == [("beta", 1)]
    del routed
    gc.collect()  # Python's finalizer does not call it again
    assert released == [("beta", 1)]

    def refuse(*key):
        raise RuntimeError("the engine stopped")
    routed_adapter(("beta", 1), refuse).__del__()  # never raises into Ray Serve's load
