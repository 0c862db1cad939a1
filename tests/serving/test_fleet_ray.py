"""A 2-replica fleet on a local Ray cluster (serving.fleet), through Ray Serve's gRPC proxy.

One cluster and one application for the whole module (started once, ~30 s on two cores):
two AdapterReplicas of the tiny backbone with a quarter CPU each, and the FleetController.
The same published adapters as the single-server tests (conftest.py), and the same
clients (`serving.client.Client`, raw stubs) pointed at the proxy's port.

VLADAPTER_FLEET_SWAPS sets the hot-swap test's number of swaps (default 40 in CI; the
brief's full run is 200).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import grpc
import pytest
import ray
from ray import serve
from serving_helpers import ALL_TASKS, RECIPES, direct, request_for
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.client import Client
from serving.config import ServeConfig
from serving.fleet.app import APP_NAME, CONTROLLER, ROUTE_PREFIX, application, start_ray
from serving.fleet.replica import REPLICA_KEY
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc

SWAPS = int(os.environ.get("VLADAPTER_FLEET_SWAPS", "40"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Fleet:
    config: ServeConfig
    target: str

    def snapshot(self) -> dict:
        """The controller's record and each replica's last report."""
        handle = serve.get_deployment_handle(CONTROLLER, app_name=APP_NAME)
        return handle.snapshot.remote().result(timeout_s=30)

    def wait_replicas(self, count: int, timeout: float = 120.0) -> dict:
        """Wait until `count` replicas serve the record; the snapshot then."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.snapshot()
            current = [r for r, report in snapshot["replicas"].items()
                       if report["applied"] == snapshot["generation"]]
            if len(current) == count and len(snapshot["replicas"]) == count:
                return snapshot
            assert time.monotonic() < deadline, f"fleet did not settle: {snapshot}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def fleet(backbone, published, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet-backbone")
    backbone.save_pretrained(folder)  # replicas load the very backbone the adapters fit
    config = ServeConfig(registry=published.root, backbone=str(folder),
                         load=("alpha", "beta", "gamma"), port=_free_port(),
                         http_port=_free_port(), ray=True, replicas=2, replica_cpus=0.25,
                         max_queue_delay_ms=5.0, device_slots=4, grace_s=10.0,
                         fleet_sync_s=30.0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        start_ray(config)
        serve.run(application(config), name=APP_NAME, route_prefix=ROUTE_PREFIX)
        running = Fleet(config, f"127.0.0.1:{config.port}")
        running.wait_replicas(2)
        yield running
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def channel(fleet):
    with grpc.insecure_channel(fleet.target) as chan:
        yield chan


def _predict(stub, message, routed: bool = True) -> tuple[inference_pb2.PredictResponse, str]:
    """(response, replica that answered); routed: send the multiplexed id as Client does."""
    metadata = (("multiplexed_model_id", message.adapter.name),) if routed else ()
    response, call = stub.Predict.with_call(message, metadata=metadata, timeout=60)
    return response, dict(call.trailing_metadata())[REPLICA_KEY]


def test_two_replicas_answer_every_task_like_the_modeling_api(fleet, backbone, published):
    with Client(fleet.target, timeout=60) as client:
        for seed, task in enumerate(ALL_TASKS):
            for name, (_, tasks, _) in RECIPES.items():
                if task not in tasks:
                    continue
                message = request_for(task, name, seed=seed)
                answer = client.predict(message)
                version = max(v for n, v in published.models if n == name)
                assert (answer.adapter_name, answer.adapter_version) == (name, version)
                expected, scores = direct(backbone, published.models[(name, version)], message)
                assert answer.text == expected, (task, name)
                assert [s.log_prob for s in answer.scores] == pytest.approx(scores, abs=1e-4)
    answered = {r: report["stats"]["answered"] for r, report in
                fleet.wait_replicas(2)["replicas"].items()}
    assert len(answered) == 2, answered
