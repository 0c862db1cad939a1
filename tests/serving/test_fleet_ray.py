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
import queue
import re
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import grpc
import pytest
import ray
import tritonclient.grpc as triton
from kserve_helpers import infer, kserve_inputs, kserve_parameters
from ray import serve
from serving_helpers import ALL_TASKS, RECIPES, direct, request_for
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.client import Client
from serving.config import ServeConfig
from serving.fleet.app import (
    APP_NAME,
    CONTROLLER,
    REPLICA,
    ROUTE_PREFIX,
    application,
    start_ray,
)
from serving.fleet.replica import REPLICA_KEY
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc

SWAPS = int(os.environ.get("VLADAPTER_FLEET_SWAPS", "40"))
# Ray Serve's router settings the cluster's processes inherit (see running_fleet).
ROUTER_ENV = {"RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S": "20",
              "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "2",
              "RAY_SERVE_MAX_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "10"}


def _free_port(count: int = 1) -> int:
    """A port p such that p .. p + count - 1 are free now."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        try:
            for port in range(base + 1, base + count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


@dataclass
class Fleet:
    config: ServeConfig
    target: str

    def snapshot(self) -> dict:
        """The controller's record and each replica's last report."""
        handle = serve.get_deployment_handle(CONTROLLER, app_name=APP_NAME)
        return handle.snapshot.remote().result(timeout_s=30)

    def held(self, answered: dict[str, str], timeout: float = 60.0) -> dict[str, set[str]]:
        """{replica: the multiplexed ids it holds}, once each replica of `answered` ({id:
        the replica that answered a request for it}) reports its id held (replicas report
        with each poll, <= 1 s)."""
        deadline = time.monotonic() + timeout
        while True:
            held = {replica: set(report["stats"]["multiplexed_ids"]) for
                    replica, report in self.snapshot()["replicas"].items()}
            if all(key in held.get(replica, ()) for key, replica in answered.items()):
                return held
            assert time.monotonic() < deadline, f"not reported held: {answered}, {held}"
            time.sleep(0.2)

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


@contextmanager
def running_fleet(config: ServeConfig) -> Iterator[Fleet]:
    """A local Ray cluster serving `config`'s fleet of 2 replicas, settled; shut down after.

    Ray Serve's router waits 1-2 s for a replica to report an adapter before sending its
    request anywhere, and gives a replica 0.1 s to say how busy it is before trying the
    replica with the fewest adapters; on a loaded machine either runs out, and the adapter
    is loaded on both replicas. The cluster's processes inherit longer waits (os.environ
    before ray.init, `ROUTER_ENV`), so routing does not depend on the machine's speed; the
    first request for a new adapter does not wait either way."""
    saved = {name: os.environ.get(name) for name in ROUTER_ENV}
    os.environ.update(ROUTER_ENV)
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
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def fleet(backbone, published, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet-backbone")
    backbone.save_pretrained(folder)  # replicas load the very backbone the adapters fit
    config = ServeConfig(registry=published.root, backbone=str(folder),
                         load=("alpha", "beta", "gamma"), port=_free_port(),
                         http_port=_free_port(), ray=True, replicas=2, replica_cpus=0.25,
                         max_queue_delay_ms=5.0, device_slots=4, grace_s=10.0,
                         fleet_sync_s=30.0, metrics_port=_free_port(2))
    with running_fleet(config) as running:
        yield running


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


def _each_replica(call, answer, replicas: int = 2, tries: int = 60) -> dict[str, set]:
    """Repeat an unrouted `call()` (-> (response, grpc call)) until `replicas` replicas
    answered: {replica: {answer(response), ...}} (errors carry no replica id)."""
    seen: dict[str, set] = {}
    for _ in range(tries):
        response, grpc_call = call()
        seen.setdefault(dict(grpc_call.trailing_metadata())[REPLICA_KEY], set()).add(
            answer(response))
        if len(seen) >= replicas:
            return seen
    raise AssertionError(f"only {sorted(seen)} answered {tries} unrouted calls")


def test_an_adapters_requests_land_on_a_replica_that_holds_it(fleet, channel):
    """With the multiplexed id (as Client sends it) each request lands on a replica that
    holds its adapter, an adapter one replica holds keeps to that one; without it Ray
    Serve spreads the same requests over both (so the check can fail)."""
    stub = inference_pb2_grpc.InferenceStub(channel)
    names = ("alpha", "beta", "gamma")
    # A first request each: one replica loads it (if none held it) and reports it.
    warm = {name: _predict(stub, request_for("vqa", name, seed=0))[1] for name in names}
    held = fleet.held(warm)  # Ray Serve's tables after the warm-up (no id leaves them)
    landed: dict[str, Counter] = {name: Counter() for name in names}
    for name in names:
        for seed in range(1, 9):
            replica = _predict(stub, request_for("vqa", name, seed=seed))[1]
            assert name in held[replica], \
                f"{name} seed {seed} went to {replica}, which did not hold it: {held}"
            landed[name][replica] += 1
    # An adapter one replica holds keeps to it; one that both hold (an earlier test's
    # requests may have loaded it on both) may go to either, each holding it (checked above).
    holders = {name: {r for r, ids in held.items() if name in ids} for name in names}
    assert all(len(landed[name]) == 1 for name in names if len(holders[name]) == 1), \
        (landed, held)
    assert len({r for replicas in landed.values() for r in replicas}) == 2, landed
    unrouted = Counter(_predict(stub, request_for("vqa", "alpha", seed=seed), routed=False)[1]
                       for seed in range(16))
    assert len(unrouted) == 2, unrouted  # random ties: both sides once in 16, p > 0.9999


def _status(call) -> tuple[grpc.StatusCode, str]:
    """(code, message) of a call; object addresses in messages (PIL's) do not count."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), re.sub(r"0x[0-9a-f]+", "0x", error.details())
    return grpc.StatusCode.OK, ""


def _bad_calls(channel) -> dict[str, callable]:
    """One bad call of each kind, on `channel`."""
    inference = inference_pb2_grpc.InferenceStub(channel)
    repository = repository_pb2_grpc.RepositoryStub(channel)
    kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    good = request_for("vqa", "alpha", seed=3)

    def changed(**fields) -> inference_pb2.PredictRequest:
        message = inference_pb2.PredictRequest()
        message.CopyFrom(good)
        for field, value in fields.items():
            if callable(value):
                value(message)
            elif isinstance(value, str):
                setattr(message, field, value)
            else:
                getattr(message, field).CopyFrom(value)
        return message

    def image(data: bytes):
        def apply(message):
            del message.images[:]
            message.images.add(encoded=data)
        return apply

    raw = channel.unary_unary("/vladapter.v1.Inference/Predict")
    load = repository_pb2.LoadRequest
    return {
        "empty task": lambda: inference.Predict(changed(task="")),
        "unknown task": lambda: inference.Predict(changed(task="vqa3")),
        "not loaded": lambda: inference.Predict(request_for("vqa", "nobody")),
        "version 0": lambda: inference.Predict(changed(adapter=inference_pb2.AdapterRef(
            name="alpha", version=0))),
        "unknown alias": lambda: inference.Predict(changed(adapter=inference_pb2.AdapterRef(
            name="alpha", alias="nope"))),
        "task it lacks": lambda: inference.Predict(request_for("gqa", "beta")),
        "not an image": lambda: inference.Predict(changed(images=image(b"not an image"))),
        "too many tokens": lambda: inference.Predict(changed(
            generation=inference_pb2.GenerationOptions(max_new_tokens=10_000))),
        "bytes": lambda: raw(b"\x0a\x02\xff\xfe"),
        "stream": lambda: list(inference.PredictStream(changed(task="vqa3"))),
        "load alien": lambda: repository.Load(load(adapter=inference_pb2.AdapterRef(
            name="alien"))),
        "load nobody": lambda: repository.Load(load(adapter=inference_pb2.AdapterRef(
            name="nobody"))),
        "unload nobody": lambda: repository.Unload(repository_pb2.UnloadRequest(
            name="nobody")),
        "pin nobody": lambda: repository.Pin(repository_pb2.PinRequest(name="nobody")),
        "status nobody": lambda: repository.Status(repository_pb2.StatusRequest(
            name="nobody")),
        "kserve model": lambda: kserve.ModelInfer(service_pb2.ModelInferRequest(
            model_name="nobody")),
        "kserve unload": lambda: kserve.RepositoryModelUnload(
            service_pb2.RepositoryModelUnloadRequest(model_name="nobody")),
    }


def test_bad_inputs_get_the_single_servers_status_codes_and_messages(fleet, channel, server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as single:
        expected = {kind: _status(call) for kind, call in _bad_calls(single).items()}
    got = {kind: _status(call) for kind, call in _bad_calls(channel).items()}
    assert got == expected
    assert {code for code, _ in got.values()} == {
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION}


def test_kserve_v2_answers_through_the_proxy(fleet, channel):
    message = request_for("nlvr2", "alpha", seed=5)
    expected = inference_pb2_grpc.InferenceStub(channel).Predict(message, timeout=60)
    with triton.InferenceServerClient(fleet.target) as client:
        assert client.is_server_ready() and client.is_model_ready("alpha")
        text, scores, version = infer(client, message,
                                      headers={"multiplexed_model_id": "alpha"})
        assert (text, version) == (expected.text, "2")
        assert scores == pytest.approx([s.log_prob for s in expected.scores], abs=1e-4)
        answers: queue.SimpleQueue = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("alpha", kserve_inputs(message), request_id="s1",
                                  parameters=kserve_parameters(message))
        result, error = answers.get(timeout=60)
        client.stop_stream()
    assert error is None and result.as_numpy("TEXT")[0].decode() == expected.text


def test_load_unload_and_pin_reach_every_replica(fleet, channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    repository = repository_pb2_grpc.RepositoryStub(channel)
    status = repository_pb2.StatusRequest()
    with Client(fleet.target, timeout=60) as client:
        assert client.load("alpha", version=1).adapter.version == 1
        versions = _each_replica(lambda: stub.Predict.with_call(request_for("vqa", "alpha")),
                                 lambda response: response.adapter_version)
        assert list(versions.values()) == [{1}, {1}]
        client.unload("gamma")
        client.pin("beta")
        served = _each_replica(  # Status: each replica's own lifecycle
            lambda: repository.Status.with_call(status),
            lambda response: tuple((a.name, a.version, a.pinned) for a in response.adapters))
        assert list(served.values()) == [{(("alpha", 1, False), ("beta", 1, True))}] * 2
        client.unpin("beta")
        client.load("gamma")
        client.load("alpha")  # back to the latest, version 2
    record = fleet.wait_replicas(2)
    assert record["adapters"] == {"alpha": (2, False), "beta": (1, False),
                                  "gamma": (1, False)}


def test_each_replica_serves_prometheus_on_its_own_port(fleet):
    """--metrics-port P: the replicas of local rank 0 and 1 serve P and P + 1."""
    bodies = [urllib.request.urlopen(f"http://127.0.0.1:{fleet.config.metrics_port + rank}"
                                     "/metrics", timeout=30).read().decode()
              for rank in range(2)]
    answered = [sum(float(line.split()[-1]) for line in body.splitlines()
                    if line.startswith("vladapter_latency_seconds_count{")) for body in bodies]
    assert all(count > 0 for count in answered), answered  # both served requests by now


def _active_periods(initial: int, swaps: list[tuple[float, float, int]]
                    ) -> list[tuple[int, float, float]]:
    """(version, from, until) it may serve: a swap (start, end, version) makes `version`
    active from its start and the one it replaces inactive from its end (a Load takes
    effect at some moment of its call)."""
    periods, version, since = [], initial, float("-inf")
    for start, end, new in swaps:
        periods.append((version, since, end))
        version, since = new, start
    return periods + [(version, since, float("inf"))]


def _active_during(periods, start: float, end: float) -> set[int]:
    """The versions active at some moment of [start, end]."""
    return {version for version, begin, until in periods if begin <= end and until >= start}


class Load:
    """Client threads sending Predicts for `name` (no version: the active one) until
    stopped, half with the multiplexed id, half without (both replicas get some)."""

    def __init__(self, target: str, name: str, threads: int = 4):
        self.channel = grpc.insecure_channel(target)
        stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.answers: list[tuple[float, float, int, str]] = []  # start, end, version, replica
        self.failures: list[tuple[float, grpc.StatusCode, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(stub, name, i % 2 == 0))
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, stub, name: str, routed: bool) -> None:
        seed = 0
        while not self._stop.is_set():
            seed += 1
            message = request_for("vqa", name, seed=seed % 5, max_new_tokens=2)
            metadata = (("multiplexed_model_id", name),) if routed else ()
            start = time.monotonic()
            try:
                response, call = stub.Predict.with_call(message, metadata=metadata, timeout=60)
            except grpc.RpcError as error:
                self.failures.append((start, error.code(), error.details()))
                continue
            self.answers.append((start, time.monotonic(), response.adapter_version,
                                 dict(call.trailing_metadata())[REPLICA_KEY]))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        self.channel.close()


def test_hot_swap_reaches_the_fleet_under_load_with_no_failed_request(fleet):
    """SWAPS Loads alternating alpha v1 / v2 while 4 clients send requests for alpha:
    no request fails, each answer comes from a version active at some moment of its call,
    and both replicas answered throughout."""
    load = Load(fleet.target, "alpha")
    swaps = []
    try:
        with Client(fleet.target, timeout=60) as client:
            time.sleep(0.5)
            for k in range(SWAPS):
                version = 1 if k % 2 == 0 else 2
                start = time.monotonic()
                assert client.load("alpha", version=version).adapter.version == version
                swaps.append((start, time.monotonic(), version))
                time.sleep(0.05)
            time.sleep(0.3)
    finally:
        load.stop()
    assert load.failures == []
    periods = _active_periods(2, swaps)
    stale = [a for a in load.answers if a[2] not in _active_during(periods, a[0], a[1])]
    assert stale == [], f"{len(stale)} of {len(load.answers)} answers from inactive versions"
    assert {a[2] for a in load.answers} == {1, 2}
    assert len({a[3] for a in load.answers}) == 2
    after = swaps[-1][1]  # the check can fail: version 1 is out of service after the last swap
    assert _active_during(periods, after + 1, after + 2) == {2}
    assert len(load.answers) > SWAPS
    print(f"{SWAPS} swaps in {swaps[-1][1] - swaps[0][0]:.1f}s, {len(load.answers)} answers "
          f"on {len({a[3] for a in load.answers})} replicas, 0 failed, 0 stale")


def _replica_actors() -> list[dict]:
    return [actor for actor in ray.util.list_named_actors(all_namespaces=True)
            if f"#{REPLICA}#" in actor["name"]]


def test_a_killed_replica_is_replaced_and_no_request_is_lost_silently(fleet, channel):
    """Kill one replica under load: every call gets an answer or UNAVAILABLE; a Load made
    meanwhile no longer waits for the dead replica; its replacement starts on the current
    record and serves."""
    stub = inference_pb2_grpc.InferenceStub(channel)
    load = Load(fleet.target, "alpha")
    try:
        time.sleep(1.0)
        victim = _replica_actors()[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        with Client(fleet.target, timeout=120) as client:
            assert client.load("alpha", version=1).adapter.version == 1
        snapshot = fleet.wait_replicas(2, timeout=180)
    finally:
        load.stop()
    codes = Counter(code for _, code, _ in load.failures)
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}, load.failures[:3]
    assert load.answers
    dead = victim["name"].rsplit("#", 1)[1]
    assert dead not in snapshot["replicas"]
    versions = _each_replica(lambda: stub.Predict.with_call(request_for("vqa", "alpha")),
                             lambda response: response.adapter_version)
    assert dead not in versions and list(versions.values()) == [{1}, {1}]
    with Client(fleet.target, timeout=60) as client:
        client.load("alpha")
    print(f"killed {dead}: {len(load.answers)} answered, {dict(codes)} refused")


def test_replicas_that_stop_answer_their_calls_first(fleet):
    """Redeploy the fleet with one replica under load (serve.run gives every run a new code
    version, so Ray Serve starts the new replica, then stops both old ones the way it scales
    down: no new calls, the ongoing ones answered, then __del__): no call fails."""
    load = Load(fleet.target, "alpha")
    try:
        time.sleep(1.0)
        before = {a[3] for a in load.answers}
        serve.run(application(replace(fleet.config, replicas=1)), name=APP_NAME,
                  route_prefix=ROUTE_PREFIX)
        snapshot = fleet.wait_replicas(1)
        time.sleep(1.0)
        after = {a[3] for a in load.answers[-10:]}
    finally:
        load.stop()
    assert load.failures == []
    assert len(before) == 2 and after == set(snapshot["replicas"]) and not after & before
