"""200 hot-swaps between two versions while clients keep sending requests: nothing fails,
every response names the version that served it, and its text is that version's answer."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from serving_helpers import direct, request_for, start_server

from serving.protos import inference_pb2_grpc, repository_pb2, repository_pb2_grpc

SWAPS = 200
CLIENTS = 3


@pytest.fixture(scope="module")
def swap_server(backbone, published):
    running = start_server(backbone, published, max_queue_delay_ms=1.0)
    yield running
    running.stop(grace=5)


def _client(stub, probes, stop: threading.Event, results: list, errors: list) -> None:
    i = 0
    while not stop.is_set():
        message = probes[i % len(probes)]
        i += 1
        try:
            results.append((message.task, stub.Predict(message, timeout=30)))
        except grpc.RpcError as exc:  # any failure is a test failure
            errors.append(exc)


def test_hot_swap_under_load_fails_nothing_and_never_mixes_versions(swap_server, published,
                                                                    backbone):
    probes = [request_for("vqa", "alpha", seed=1, max_new_tokens=4),
              request_for("caption", "alpha", seed=2, max_new_tokens=4)]
    expected = {(m.task, v): direct(backbone, published.models[("alpha", v)], m)[0]
                for m in probes for v in (1, 2)}
    for m in probes:
        assert expected[(m.task, 1)] != expected[(m.task, 2)]  # versions are distinguishable
    results, errors, stop = [], [], threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{swap_server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        repo = repository_pb2_grpc.RepositoryStub(channel)
        threads = [threading.Thread(target=_client, args=(stub, probes, stop, results, errors))
                   for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for swap in range(SWAPS):
            request = repository_pb2.LoadRequest()
            request.adapter.name, request.adapter.version = "alpha", 1 + swap % 2
            seen = len(results)
            assert repo.Load(request, timeout=30).adapter.version == 1 + swap % 2
            while len(results) == seen and not errors:  # let requests straddle every swap
                time.sleep(0.001)
        stop.set()
        for t in threads:
            t.join()
        final = repo.Status(repository_pb2.StatusRequest(name="alpha"), timeout=5)
    assert not errors
    versions = {r.adapter_version for _, r in results}
    assert versions == {1, 2} and len(results) >= SWAPS
    for task, response in results:
        assert response.text == expected[(task, response.adapter_version)]
    # The last Load made version 2 active; version 1 was freed from the device once idle.
    assert [(s.version, s.state) for s in final.adapters] == [(2, "READY")]
    assert all(info is None or info.adapter != ("alpha", 1)
               for info in swap_server.slot_table.snapshot())
