"""An adapter is served only on the backbone it was trained on, tokenizer included.

Two tiny backbones with the same config and weights but different word tokenizers map
the same text to different ids, so an adapter trained on one answers nonsense (or '') on
the other: loading it is FAILED_PRECONDITION, naming both fingerprints.
"""

from __future__ import annotations

import grpc
import pytest
import torch
from serving_helpers import RECIPES, WORDS, random_adapter, request_for, tiny_backbone

from adapters_registry import Registry
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.tokenizer import build_word_tokenizer
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact


def _publish(registry: Registry, trained_on: VLBackbone, name: str, root) -> None:
    recipe, _, _ = RECIPES["gamma"]
    model = random_adapter(trained_on, recipe, ["vqa"], seed=51)
    write_artifact(root / name, model, trained_on, {})
    registry.publish(root / name, name)


@pytest.fixture(scope="module")
def repository(backbone, tmp_path_factory):
    """A server on the tests' tiny backbone; `twin` was trained on a rebuilt copy of it,
    `retokenized` on the same weights with a tokenizer that has the words in other ids."""
    root = tmp_path_factory.mktemp("fingerprint")
    registry = Registry(str(root / "store"))
    _publish(registry, tiny_backbone(), "twin", root)
    config = preset("tiny")
    # The same words without tiny_backbone's filler words: other ids (asserted below).
    retokenized = VLBackbone.from_config(
        config, seed=0, tokenizer=build_word_tokenizer(WORDS, "t5", 512))
    assert all(torch.equal(a, b) for a, b in zip(retokenized.state_dict().values(),
                                                 backbone.state_dict().values(), strict=True))
    text = "what is the color"
    assert retokenized.tokenizer(text)["input_ids"] != backbone.tokenizer(text)["input_ids"]
    _publish(registry, retokenized, "retokenized", root)
    server = Server(ServeConfig(registry=str(root / "store"), host="127.0.0.1", port=0),
                    backbone=backbone).start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield repository_pb2_grpc.RepositoryStub(channel), retokenized.fingerprint()
    server.stop(grace=5)


def _load(stub, name: str):
    request = repository_pb2.LoadRequest()
    request.adapter.name = name
    return stub.Load(request, timeout=60)


def test_adapter_trained_on_an_identically_built_backbone_loads(repository):
    stub, _ = repository
    _load(stub, "twin")


def test_adapter_trained_with_another_tokenizer_is_failed_precondition(repository, backbone):
    stub, theirs = repository
    with pytest.raises(grpc.RpcError) as caught:
        _load(stub, "retokenized")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert theirs in caught.value.details()
    assert backbone.fingerprint() in caught.value.details()


@pytest.mark.parametrize(("device", "dtype"), [
    ("cpu", "bfloat16"),
    pytest.param("cuda", "auto", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a GPU")),
])
def test_adapter_trained_in_float32_is_served_by_a_bfloat16_server(device, dtype, tmp_path):
    """A server casts the backbone to its dtype (bf16 on CUDA by default); the fingerprint
    is the checkpoint's as loaded, so an adapter trained on the float32 weights loads and
    answers there (it was refused as trained on another backbone on the first GPU run)."""
    registry = Registry(str(tmp_path / "store"))
    trained_on = tiny_backbone()
    _publish(registry, trained_on, "twin", tmp_path)
    server = Server(ServeConfig(registry=str(tmp_path / "store"), host="127.0.0.1", port=0,
                                device=device, dtype=dtype, load=("twin",)),
                    backbone=tiny_backbone()).start()
    try:
        assert server.stack.backbone.lm.dtype == torch.bfloat16
        assert server.stack.fingerprint == trained_on.fingerprint()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            response = inference_pb2_grpc.InferenceStub(channel).Predict(
                request_for("vqa", "twin"), timeout=60)
        assert response.adapter_name == "twin" and response.adapter_version == 1
    finally:
        server.stop(grace=5)
