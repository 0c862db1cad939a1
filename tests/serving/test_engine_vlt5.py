"""The server on the papers' encoder semantics (`tiny-vl-t5`, `tiny-vl-bart`): answers equal
the modeling API, and a mixed batch equals the same requests one by one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from serving_helpers import direct, publish_recipes, request_for, start_server, tiny_backbone
from test_engine_mixed_batch import MIX, _key

from serving.protos import inference_pb2_grpc


@pytest.fixture(scope="module", params=["tiny-vl-t5", "tiny-vl-bart"])
def papers(request, tmp_path_factory):
    """(backbone, published adapters, a server that gathers a whole mix into one batch)."""
    backbone = tiny_backbone(name=request.param)
    assert backbone.config.visual_semantics == "vlt5"
    published = publish_recipes(backbone, tmp_path_factory.mktemp(request.param))
    running = start_server(backbone, published, max_batch=16, max_queue_delay_ms=150.0)
    yield backbone, published, running
    running.stop(grace=5)


def test_predict_on_the_papers_semantics_equals_the_modeling_api(papers):
    backbone, published, running = papers
    cases = [("vqa", "alpha", 1), ("nlvr2", "beta", 1), ("caption", "beta", 3),
             ("tvc", "gamma", 1), ("gqa", "gamma", 2)]
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        for task, adapter, beams in cases:
            message = request_for(task, adapter, seed=4, num_beams=beams, max_new_tokens=5)
            response = stub.Predict(message, timeout=30)
            version = running.adapters.active_version(adapter)
            text, scores = direct(backbone, published.models[(adapter, version)], message)
            assert response.text == text, task
            assert [s.log_prob for s in response.scores] == pytest.approx(scores, abs=1e-4)


def test_mixed_batch_on_the_papers_semantics_equals_requests_one_by_one(papers):
    _, _, running = papers
    messages = [request_for(task, adapter, seed=i, max_new_tokens=tokens, num_beams=beams)
                for i, (task, adapter, tokens, beams) in enumerate(MIX)]
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        alone = [stub.Predict(m, timeout=30) for m in messages]
        with ThreadPoolExecutor(len(messages)) as pool:
            together = list(pool.map(lambda m: stub.Predict(m, timeout=30), messages))
    assert running.engine.stats["max_step_rows"] >= 8  # the mix really ran together
    for single, mixed in zip(alone, together, strict=True):
        assert _key(single) == _key(mixed)
        assert [s.log_prob for s in mixed.scores] == pytest.approx(
            [s.log_prob for s in single.scores], abs=1e-4)
