"""The vision tower on other backends, end to end on localhost.

    local   --vision-backend torch, --serve-vision-model clip_vision   (the reference)
    remote  --vision-backend triton --triton-url <local> --triton-model clip_vision
    onnx    --vision-backend onnxruntime --onnx-path <`adapter-serve export-onnx` output>

Every server answers every task like the reference. Each extra server gets its own copy of
the tiny backbone (same seed, same fingerprint): the adapter hooks hold per-call state, and
the servers run at the same time.
"""

from __future__ import annotations

import grpc
import pytest
from serving_helpers import VISION_MODEL, request_for, start_server, tiny_backbone

from modeling.tasks import TASKS
from serving.cli import main as adapter_serve
from serving.protos import inference_pb2_grpc
from serving.vision_backends import OnnxVisionEncoder, TritonVisionEncoder

VISION = VISION_MODEL


@pytest.fixture(scope="module")
def local(vision_server):
    return vision_server


@pytest.fixture(scope="module")
def remote(local, published):
    running = start_server(tiny_backbone(), published, vision_backend="triton",
                           triton_url=f"127.0.0.1:{local.port}", triton_model=VISION)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def onnx_server(published, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "clip_vision.onnx"
    assert adapter_serve(["export-onnx", "--backbone", "tiny", "--out", str(path)]) == 0
    running = start_server(tiny_backbone(), published, vision_backend="onnxruntime",
                           onnx_path=str(path))
    yield running
    running.stop(grace=5)


def predict(server, message):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return inference_pb2_grpc.InferenceStub(channel).Predict(message, timeout=30)


def assert_same_answers(server, reference, seed: int) -> None:
    """Every task with new images, one request at a time (the reference shares the test's
    backbone)."""
    for offset, task in enumerate(TASKS):
        message = request_for(task, "alpha", seed=seed + offset)
        got, expected = predict(server, message), predict(reference, message)
        assert got.text == expected.text, task
        assert [s.log_prob for s in got.scores] == \
            pytest.approx([s.log_prob for s in expected.scores], abs=1e-4), task


def test_remote_tower_answers_like_the_local_one(remote, local):
    assert isinstance(remote.vision_encoder, TritonVisionEncoder)
    before = local.kserve_stats.statistics(VISION, "1").inference_count
    assert_same_answers(remote, local, seed=100)
    # The features came from the local server's vision model: each request brought new images.
    assert local.kserve_stats.statistics(VISION, "1").inference_count >= before + len(TASKS)
    assert len(remote.vision) > 0


def test_onnxruntime_tower_answers_like_torch(onnx_server, local):
    assert isinstance(onnx_server.vision_encoder, OnnxVisionEncoder)
    assert onnx_server.vision_encoder.providers == ["CPUExecutionProvider"]
    assert_same_answers(onnx_server, local, seed=200)


def test_unreachable_vision_server_fails_the_request_not_the_server(published):
    running = start_server(tiny_backbone(), published, vision_backend="triton",
                           triton_url="127.0.0.1:1", triton_model=VISION)
    try:
        with pytest.raises(grpc.RpcError) as excinfo:
            predict(running, request_for("vqa", "alpha", seed=23))
        assert excinfo.value.code() is grpc.StatusCode.INTERNAL
        assert "InferenceServerException" in excinfo.value.details()
        features = request_for("vqa", "alpha", seed=23)
        features.images[0].ClearField("encoded")
        features.images[0].features.data = bytes(4 * 4 * 64)
        features.images[0].features.tokens, features.images[0].features.feat_dim = 4, 64
        assert predict(running, features).adapter_name == "alpha"  # no tower needed: fine
    finally:
        running.stop(grace=5)
