"""Back-pressure, deadlines and cancellation: a full queue answers RESOURCE_EXHAUSTED (and
max_queue bounds every request accepted and not yet running), an expired request is
dropped with DEADLINE_EXCEEDED, a cancelled call frees its slot."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import grpc
import pytest
from serving_helpers import direct, request_for

from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc
from serving.server import Server


def _settle(server, timeout: float = 5.0) -> None:
    """Wait until the engine holds no request and no adapter reference."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.engine.in_flight() == 0 and \
                server.adapters.state("alpha", 2).in_flight == 0:
            return
        time.sleep(0.01)
    raise AssertionError("the engine kept a request or a reference")


def test_full_queue_is_resource_exhausted_and_the_queued_call_still_answers(backbone,
                                                                             published):
    config = ServeConfig(registry=published.root, host="127.0.0.1", port=0, max_queue=1)
    server = Server(config, backbone=backbone)
    server.adapters.load("alpha")
    server.grpc_server.start()  # the engine is not running yet: the queue cannot drain
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            first = stub.Predict.future(request_for("vqa", seed=1), timeout=30)
            while server.engine.in_flight() == 0:
                time.sleep(0.005)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request_for("vqa", seed=2), timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_queue=1" in caught.value.details()
            server.engine.start()
            assert first.result().adapter_version == 2
    finally:
        server.stop(grace=5)


def _until(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def test_max_queue_bounds_requests_waiting_for_their_adapter_not_only_the_queue(backbone,
                                                                                  published):
    """Requests that the engine has taken off its queue but that wait for their adapter to
    load still count: with the load held back, waves of four requests (each wave taken by
    the engine before the next) leave exactly max_queue=4 accepted; every other call is
    RESOURCE_EXHAUSTED, and the accepted ones answer once the load finishes."""
    config = ServeConfig(registry=published.root, host="127.0.0.1", port=0, max_queue=4,
                         max_batch=4)
    server = Server(config, backbone=backbone)
    server.adapters.load("alpha")
    loaded, fetches, release = server.store.fetch, [], threading.Event()

    def held_fetch(name: str, version: int) -> Future:
        fetches.append((name, version))
        held: Future = Future()
        threading.Thread(target=lambda: (release.wait(30), held.set_result(
            loaded(name, version).result())), daemon=True).start()
        return held

    server.store.fetch = held_fetch
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            calls = []
            for wave in range(5):
                calls += [stub.Predict.future(request_for("vqa", seed=10 * wave + i),
                                              timeout=60) for i in range(4)]
                # every call of the wave is refused or bound by the engine (its load asked for)
                _until(lambda sent=list(calls): len(fetches) + sum(c.done() for c in sent)
                       == len(sent))
            refused = [c for c in calls if c.done()]
            assert len(calls) - len(refused) == 4 == server.engine.in_flight()
            for call in refused:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_queue=4" in call.details()
            release.set()
            answers = [c.result() for c in calls if c not in refused]
            assert [a.adapter_version for a in answers] == [2] * 4
    finally:
        release.set()
        server.stop(grace=5)


def test_request_past_its_deadline_is_dropped_not_run(backbone, published):
    config = ServeConfig(registry=published.root, host="127.0.0.1", port=0)
    server = Server(config, backbone=backbone)
    server.adapters.load("alpha")
    server.grpc_server.start()  # hold the engine until the deadline has passed
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request_for("caption", seed=3), timeout=0.3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert server.engine.in_flight() == 1
            server.engine.start()
            _settle(server)
        assert server.engine.stats["deadline_exceeded"] == 1
        assert server.engine.stats["completed"] == 0
    finally:
        server.stop(grace=5)


def test_cancelled_stream_leaves_the_batch_and_frees_its_slot(server, inference, published,
                                                              backbone):
    message = request_for("caption", "alpha", seed=4, max_new_tokens=40)
    text, _ = direct(backbone, published.models[("alpha", 2)], message)
    assert len(text.split()) >= 5  # long enough to be cancelled mid-decode
    before = server.engine.stats["cancelled"]
    call = inference.PredictStream(message, timeout=30)
    first = next(call)
    assert not first.done
    call.cancel()
    _settle(server)
    assert server.engine.stats["cancelled"] == before + 1
    assert inference.Predict(request_for("vqa", seed=5), timeout=30).adapter_name == "alpha"


def test_more_adapter_sets_than_device_slots_are_all_served(backbone, published):
    """Six (adapter, task) sets queued at once over two device slots: requests that wait
    hold no slot, so every set gets one as rows finish and none is RESOURCE_EXHAUSTED."""
    config = ServeConfig(registry=published.root, host="127.0.0.1", port=0, device_slots=2,
                         max_queue_delay_ms=50.0)
    server = Server(config, backbone=backbone)
    for name in ("alpha", "beta", "gamma"):
        server.adapters.load(name)
    server.grpc_server.start()  # queue everything before the engine takes any of it
    wanted = [("alpha", "vqa"), ("beta", "caption"), ("gamma", "gqa"), ("alpha", "tvc"),
              ("beta", "nlvr2"), ("gamma", "how2qa")]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            calls = [stub.Predict.future(request_for(task, adapter, seed=i), timeout=60)
                     for i, (adapter, task) in enumerate(wanted)]
            while server.engine.in_flight() < len(wanted):
                time.sleep(0.005)
            server.engine.start()
            answers = [call.result() for call in calls]
        assert [a.adapter_version for a in answers] == [2, 1, 1, 2, 1, 1]
        assert server.engine.stats["completed"] == len(wanted)
    finally:
        server.stop(grace=5)
