"""A Florence-2 folder served: every task through a real localhost channel equals the
modeling API on the same backbone; an adapter of another family is refused."""

from __future__ import annotations

import grpc
import pytest
import torch
from serving_helpers import WORDS, Published, direct, load_refusal, random_adapter, request_for

from adapters_registry import Registry
from benchmarks.florence2_sizes import sized_config, write_random
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.families import load_backbone
from modeling.recipe import MethodEntry
from modeling.tasks import TASKS
from modeling.tokenizer import build_word_tokenizer
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc
from serving.server import Server
from serving.vision_backends import export_vision_onnx, make_vision_encoder, require_vit_tower
from training.artifact import write_artifact

# alpha: adapters + LayerNorms on every task; beta: LoRA + prompts; gamma: prefixes.
RECIPES = {
    "alpha": ([MethodEntry("adapter", {"reduction_factor": 8}, "multiple"),
               MethodEntry("trainable_tensors", {"layer_norms": True}, "single", "tensors")],
              list(TASKS)),
    "beta": ([MethodEntry("lora", {"rank": 4, "alpha": 8}, "single"),
              MethodEntry("prompt_tuning", {"length": 3, "hidden_dim": 16}, "multiple")],
             ["vqa", "nlvr2", "caption", "tvqa"]),
    "gamma": ([MethodEntry("prefix_tuning", {"length": 2, "hidden_dim": 16}, "single")],
              ["gqa", "tvc"]),
}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> VLBackbone:
    """A tiny random Florence-2 folder (word tokenizer over its whole vocabulary, so texts
    differ when ids do), loaded as `adapter-serve --backbone FOLDER` loads it."""
    config = sized_config("tiny")
    vocab = config.text_config.vocab_size
    words = list(dict.fromkeys([w.lower() for w in WORDS] + [f"w{i}" for i in range(vocab)]))
    tokenizer = build_word_tokenizer(words[:vocab - 4], "bart", vocab)
    folder = write_random(tmp_path_factory.mktemp("florence2"), config, 32,
                                    tokenizer, seed=0)
    return load_backbone(folder)


@pytest.fixture(scope="module")
def published(backbone, tmp_path_factory) -> Published:
    base = tmp_path_factory.mktemp("registry")
    registry = Registry(str(base / "store"))
    models = {}
    for seed, (name, (recipe, tasks)) in enumerate(RECIPES.items()):
        model = random_adapter(backbone, recipe, tasks, seed)
        write_artifact(base / name, model, backbone, {"trainable": model.trainable_count()})
        models[(name, registry.publish(base / name, name))] = model
    bart = VLBackbone.from_config(preset("tiny-bart"))
    other = random_adapter(bart, RECIPES["gamma"][0], ["vqa"], 7)
    write_artifact(base / "bart-adapter", other, bart, {})
    registry.publish(base / "bart-adapter", "bart-adapter")
    return Published(str(base / "store"), models)


@pytest.fixture(scope="module")
def channel(backbone, published):
    config = ServeConfig(registry=published.root, host="127.0.0.1", port=0,
                         load=tuple(RECIPES), max_queue_delay_ms=20.0)
    server = Server(config, backbone=backbone).start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan
    server.stop(grace=5)


CASES = [(task, "alpha", 1) for task in TASKS] + [
    ("vqa", "beta", 1), ("nlvr2", "beta", 1), ("caption", "beta", 3), ("tvqa", "beta", 1),
    ("gqa", "gamma", 1), ("tvc", "gamma", 2)]


@pytest.mark.parametrize(("task", "adapter", "beams"), CASES)
def test_every_task_served_on_florence2_equals_the_modeling_api(channel, published, backbone,
                                                                 task, adapter, beams):
    message = request_for(task, adapter, seed=3, num_beams=beams, max_new_tokens=5)
    response = inference_pb2_grpc.InferenceStub(channel).Predict(message, timeout=60)
    text, scores = direct(backbone, published.models[(adapter, 1)], message)
    assert response.text == text
    if scores:
        assert [s.log_prob for s in response.scores] == pytest.approx(scores, abs=1e-4)


def test_an_adapter_trained_on_another_family_is_refused(channel):
    refusal = load_refusal(channel, "bart-adapter")
    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "base model" in refusal.details()


def test_the_florence2_tower_serves_from_onnx_and_only_the_kserve_vision_model_is_refused(
        backbone, tmp_path):
    """The ONNX file computes DaViT + projector (`encode_images`); hosting the tower as a
    KServe model is for CLIP / SigLIP towers and says so by name."""
    path = export_vision_onnx(backbone, tmp_path / "vision.onnx")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    encoder = make_vision_encoder("onnxruntime", backbone, onnx_path=path)
    torch.testing.assert_close(encoder.encode(pixels), backbone.encode_images(pixels),
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="not this backbone's florence2 tower"):
        require_vit_tower(backbone, "--serve-vision-model")
