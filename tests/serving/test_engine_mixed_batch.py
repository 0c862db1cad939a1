"""The mixed-batch oracle over gRPC: requests sent together (mixing adapters, tasks,
methods, greedy and beam search in one decode step, joining and leaving at different
steps) equal the same requests sent one by one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_helpers import request_for, start_server

from serving.protos import inference_pb2_grpc

# (task, adapter, max_new_tokens, num_beams): greedy and beam requests decode together.
MIX = [("vqa", "alpha", 4, 1), ("vqa", "beta", 2, 1), ("gqa", "gamma", 6, 1),
       ("caption", "beta", 5, 1), ("nlvr2", "alpha", 4, 1), ("tvqa", "beta", 4, 1),
       ("tvc", "gamma", 3, 1), ("yc2c", "alpha", 7, 1), ("caption", "alpha", 1, 1),
       ("how2qa", "gamma", 4, 1), ("vqa", "alpha", 3, 1), ("yc2c", "gamma", 6, 3),
       ("vqa", "beta", 5, 2), ("tvc", "alpha", 7, 4)]


@pytest.fixture(scope="module")
def batching_server(backbone, published):
    """A server that waits long enough to gather the whole mix into one batch."""
    running = start_server(backbone, published, max_batch=16, max_queue_delay_ms=150.0)
    yield running
    running.stop(grace=5)


def _key(response):
    return (response.text, response.label, [s.label for s in response.scores],
            response.adapter_name, response.adapter_version)


def test_mixed_batch_equals_requests_one_by_one(batching_server):
    import grpc

    messages = [request_for(task, adapter, seed=i, max_new_tokens=tokens, num_beams=beams)
                for i, (task, adapter, tokens, beams) in enumerate(MIX)]
    with grpc.insecure_channel(f"127.0.0.1:{batching_server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        alone = [stub.Predict(m, timeout=30) for m in messages]
        before = dict(batching_server.engine.stats)
        with ThreadPoolExecutor(len(messages)) as pool:
            together = list(pool.map(lambda m: stub.Predict(m, timeout=30), messages))
    stats = batching_server.engine.stats
    assert before["steps_mixing_beams_and_greedy"] == 0  # one by one really ran alone
    assert stats["max_step_rows"] >= 8 and stats["max_step_slots"] >= 3  # and this mixed,
    assert stats["steps_mixing_beams_and_greedy"] > 0  # beams and greedy rows in one step
    for single, mixed in zip(alone, together, strict=True):
        assert _key(single) == _key(mixed)
        assert [s.log_prob for s in mixed.scores] == pytest.approx(
            [s.log_prob for s in single.scores], abs=1e-4)
