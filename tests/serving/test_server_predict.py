"""Results through the server over a real localhost channel equal direct model calls."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2
from serving_helpers import direct, metrics_text, request_for

from modeling.tasks import TASKS

# Every task with an adapter that has it: alpha (adapters), beta (LoRA + prompts), gamma
# (prefixes) together cover all four serve forms.
CASES = [(task, "alpha") for task in TASKS] + [
    ("vqa", "beta"), ("nlvr2", "beta"), ("caption", "beta"), ("tvqa", "beta"),
    ("gqa", "gamma"), ("tvc", "gamma"), ("how2qa", "gamma")]


@pytest.mark.parametrize(("task", "adapter"), CASES)
def test_predict_equals_the_modeling_api(task, adapter, server, inference, published,
                                         backbone):
    message = request_for(task, adapter, seed=3)
    response = inference.Predict(message, timeout=30)
    version = server.adapters.active_version(adapter)
    text, scores = direct(backbone, published.models[(adapter, version)], message)
    assert response.text == text
    assert response.adapter_name == adapter and response.adapter_version == version
    assert response.request_id == message.request_id
    if scores:
        assert [s.log_prob for s in response.scores] == pytest.approx(scores, abs=1e-4)
        assert response.label in {s.label for s in response.scores}
    assert response.timings.queue_ms >= 0 and response.timings.encode_ms > 0


@pytest.mark.parametrize(("task", "adapter", "version", "beams", "tokens"), [
    ("caption", "beta", 1, 3, 5), ("caption", "alpha", 2, 4, 10), ("vqa", "gamma", 1, 2, 8),
    ("tvc", "alpha", 2, 3, 9), ("yc2c", "gamma", 1, 4, 10)])
def test_beam_search_equals_the_modeling_api(inference, published, backbone, task, adapter,
                                             version, beams, tokens):
    message = request_for(task, adapter, seed=5, num_beams=beams, max_new_tokens=tokens)
    response = inference.Predict(message, timeout=30)
    assert response.text == direct(backbone, published.models[(adapter, version)], message)[0]


def test_stream_yields_tokens_then_the_full_response(inference, published, backbone):
    message = request_for("caption", "alpha", seed=6, max_new_tokens=6)
    chunks = list(inference.PredictStream(message, timeout=30))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    final = chunks[-1].response
    assert "".join(c.token_text for c in chunks[:-1]) == final.text
    assert len(chunks) >= 2
    version = final.adapter_version
    assert final.text == direct(backbone, published.models[("alpha", version)], message)[0]


def test_health_reports_serving(health_stub):
    for service in ("", "vladapter.v1.Inference"):
        reply = health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_our_services(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"vladapter.v1.Inference", "vladapter.v1.Repository",
            "grpc.health.v1.Health"} <= names


def test_precomputed_features_give_the_same_answer_as_the_image(inference, backbone, server):
    import io

    import numpy as np
    from PIL import Image

    from modeling.inputs import image_processor, images_to_pixels
    from serving.protos import inference_pb2

    message = request_for("vqa", "alpha", seed=9)
    pixels = images_to_pixels([Image.open(io.BytesIO(message.images[0].encoded))],
                              image_processor(backbone.config.vision.image_size))
    features = backbone.encode_images(pixels)[0].numpy().astype("<f4")
    with_features = inference_pb2.PredictRequest()
    with_features.CopyFrom(message)
    del with_features.images[:]
    with_features.images.add(features=inference_pb2.Features(
        data=np.ascontiguousarray(features).tobytes(), tokens=features.shape[0],
        feat_dim=features.shape[1]))
    assert inference.Predict(with_features, timeout=30).text == \
        inference.Predict(message, timeout=30).text


def test_metrics_count_batches_cache_events_and_errors(server, inference):
    import grpc

    inference.Predict(request_for("vqa", "alpha", seed=10), timeout=30)
    with pytest.raises(grpc.RpcError):
        inference.Predict(request_for("vqa", "nobody"), timeout=30)
    text = metrics_text(server.metrics)
    assert 'vladapter_cache_events_total{event="hit",tier="device"}' in text
    assert 'vladapter_errors_total{code="NOT_FOUND"} 1.0' in text
    count = [line for line in text.splitlines() if line.startswith("vladapter_batch_size_count")]
    assert count and float(count[0].split()[-1]) >= 1
