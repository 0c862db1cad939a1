"""A BLIP backbone behind a real server: VQA and captioning answers over a localhost channel
equal the modeling API alone, for adapters covering all four serve forms, greedy and beam."""

from __future__ import annotations

import pytest
import torch
from family_helpers import blip_model
from serving_helpers import (
    Published,
    direct,
    load_refusal,
    random_adapter,
    request_for,
    start_server,
    tiny_backbone,
)

from adapters_registry import Registry
from modeling.families import blip
from modeling.recipe import MethodEntry
from modeling.tokenizer import SPECIALS, build_word_tokenizer
from serving.protos import inference_pb2_grpc
from training.artifact import write_artifact

# name -> recipe: serial adapters + LayerNorm copies, LoRA + prompts, prefixes, parallel.
RECIPES = {
    "alpha": [MethodEntry("adapter", {"width": 8}, "multiple"),
              MethodEntry("trainable_tensors", {"layer_norms": True}, "single", "tensors")],
    "beta": [MethodEntry("lora", {"rank": 4, "alpha": 8}, "single"),
             MethodEntry("prompt_tuning", {"length": 3, "hidden_dim": 16}, "multiple")],
    "gamma": [MethodEntry("prefix_tuning", {"length": 2, "hidden_dim": 16}, "single")],
    "delta": [MethodEntry("parallel_adapter", {"width": 8, "activation": "gelu"}, "single")],
}
TASKS_OF = {"vqa": ["vqa", "caption"], "caption": ["caption"]}


@pytest.fixture(scope="module", params=["vqa", "caption"])
def blip_served(request, tmp_path_factory):
    """(mode, backbone, published adapters, running server) over a tiny BLIP folder whose
    word tokenizer fills the vocabulary (every id decodes to a word)."""
    mode, root = request.param, tmp_path_factory.mktemp("blip")
    model = blip_model(mode, "tiny", seed=0)
    vocab = model.config.text_config.vocab_size
    words = ["what", "is", "the", "color", "vqa", "caption", *[f"w{i}" for i in range(vocab)]]
    model.save_pretrained(root / "model")
    build_word_tokenizer(words[: vocab - len(SPECIALS["bert"])], "bert", vocab).save_pretrained(
        root / "model")
    backbone = blip.load(root / "model")
    registry, models = Registry(str(root / "store")), {}
    for seed, (name, recipe) in enumerate(RECIPES.items()):
        adapter = random_adapter(backbone, recipe, TASKS_OF[mode], seed)
        write_artifact(root / name, adapter, backbone, {"trainable": adapter.trainable_count()})
        models[(name, registry.publish(root / name, name))] = adapter
    t5 = tiny_backbone()  # an adapter of another family, for the refusal below
    write_artifact(root / "t5", random_adapter(t5, RECIPES["delta"], ["caption"], 9), t5, {})
    registry.publish(root / "t5", "t5-adapter")
    published = Published(str(root / "store"), models)
    server = start_server(backbone, published, max_queue_delay_ms=20.0)
    server.adapters.load("delta")
    yield mode, backbone, published, server
    server.stop(grace=5)


@pytest.mark.parametrize("adapter", sorted(RECIPES))
@pytest.mark.parametrize("beams", [1, 3])
def test_blip_predict_equals_the_modeling_api(blip_served, adapter, beams):
    import grpc

    mode, backbone, published, server = blip_served
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        for seed, task in enumerate(TASKS_OF[mode]):
            message = request_for(task, adapter, seed=seed, num_beams=beams, max_new_tokens=5)
            response = stub.Predict(message, timeout=30)
            with torch.no_grad():
                text, _ = direct(backbone, published.models[(adapter, 1)], message)
            assert response.text == text, task
            assert response.adapter_name == adapter and response.adapter_version == 1


def test_blip_adapters_answer_differently_so_the_comparison_can_fail(blip_served):
    """Guard: the served texts depend on the adapter (a backbone that ignores it would
    pass the test above)."""
    mode, backbone, published, _ = blip_served
    task = TASKS_OF[mode][0]
    message = request_for(task, "alpha", seed=1, max_new_tokens=5)
    texts = {direct(backbone, published.models[(name, 1)], message)[0] for name in RECIPES}
    assert len(texts) > 1


def test_an_adapter_of_another_family_is_refused_naming_both_fingerprints(blip_served):
    import grpc

    _, backbone, _, server = blip_served
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        refusal = load_refusal(channel, "t5-adapter")
    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert backbone.fingerprint() in refusal.details()
    assert tiny_backbone().fingerprint() in refusal.details()
