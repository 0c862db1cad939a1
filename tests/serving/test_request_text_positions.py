"""A backbone reads at most `BackboneConfig.max_text_tokens` text tokens (its position table):
a longer request is refused as INVALID_ARGUMENT naming the text and that limit, over our
proto and KServe alike, instead of an index error deep in the text encoder; a request at
the limit is answered."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as triton
from family_helpers import blip_model
from kserve_helpers import kserve_inputs, kserve_parameters
from serving_helpers import random_adapter, request_for
from tritonclient.utils import InferenceServerException

from adapters_registry import Registry
from modeling.families import blip
from modeling.recipe import MethodEntry
from modeling.tasks import TASKS
from modeling.tokenizer import SPECIALS, build_word_tokenizer
from serving.config import ServeConfig
from serving.limits import Limits
from serving.protos import inference_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact

POSITIONS = 64  # the tiny BLIP text config's max_position_embeddings


@pytest.fixture(scope="module")
def blip_server(tmp_path_factory):
    """(backbone, running server with an adapter `alpha`) over a tiny BLIP VQA folder; the
    server's own max_text_tokens (256) and max_new_tokens (128) are above the backbone's
    positions."""
    root = tmp_path_factory.mktemp("blip-positions")
    model = blip_model("vqa", "tiny", seed=0)
    vocab = model.config.text_config.vocab_size
    words = ["what", "is", "the", "color", "vqa", *[f"w{i}" for i in range(vocab)]]
    model.save_pretrained(root / "model")
    build_word_tokenizer(words[: vocab - len(SPECIALS["bert"])], "bert", vocab).save_pretrained(
        root / "model")
    backbone = blip.load(root / "model")
    adapter = random_adapter(backbone, [MethodEntry("lora", {"rank": 2}, "single")], ["vqa"], 0)
    write_artifact(root / "alpha", adapter, backbone, {})
    Registry(str(root / "store")).publish(root / "alpha", "alpha")
    server = Server(ServeConfig(registry=str(root / "store"), host="127.0.0.1", port=0,
                                load=("alpha",), limits=Limits(max_new_tokens=2 * POSITIONS)),
                    backbone=backbone).start()
    yield backbone, server
    server.stop(grace=5)


def _question(backbone, tokens: int) -> str:
    """A VQA question whose encoder text (prompt and special tokens included) is `tokens`
    tokens long."""
    text = " ".join(["w1"] * tokens)
    extra = len(backbone.tokenizer(TASKS["vqa"].source_text(text))["input_ids"]) - tokens
    return " ".join(["w1"] * (tokens - extra))


def test_tiny_blip_reads_its_position_tables_length():
    model = blip_model("vqa", "tiny", device="meta")
    config = blip.backbone_config(model.config, "BlipForQuestionAnswering")
    assert config.max_text_tokens == POSITIONS == model.config.text_config.max_position_embeddings


def test_predict_longer_than_the_backbones_positions_is_invalid_argument(blip_server):
    backbone, server = blip_server
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        at_limit = request_for("vqa", "alpha", max_new_tokens=2)
        at_limit.text = _question(backbone, POSITIONS)
        assert stub.Predict(at_limit, timeout=30).adapter_name == "alpha"
        over = request_for("vqa", "alpha", max_new_tokens=2)
        over.text = _question(backbone, POSITIONS + 1)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Predict(over, timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = excinfo.value.details()
    assert message.startswith("text") and f"more than {POSITIONS} tokens" in message
    assert f"the backbone reads at most {POSITIONS} text tokens" in message


def test_kserve_infer_longer_than_the_backbones_positions_is_invalid_argument(blip_server):
    backbone, server = blip_server
    message = request_for("vqa", "alpha", max_new_tokens=2)
    message.text = _question(backbone, POSITIONS + 1)
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(InferenceServerException) as excinfo:
            client.infer("alpha", kserve_inputs(message), parameters=kserve_parameters(message),
                         client_timeout=30)
    assert excinfo.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"more than {POSITIONS} tokens" in excinfo.value.message()


def test_tiny_blip_reads_its_decoder_position_tables_length():
    model = blip_model("vqa", "tiny", device="meta")
    config = blip.backbone_config(model.config, "BlipForQuestionAnswering")
    assert config.max_decoder_tokens == POSITIONS


def test_more_new_tokens_than_the_decoders_positions_is_invalid_argument(blip_server):
    """An answer may fill the decoder's positions (the engine decodes all of them, the
    random model rarely ends early) but not run past them (was INTERNAL: an index error in
    BLIP's text decoder)."""
    backbone, server = blip_server
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        assert stub.Predict(request_for("vqa", "alpha", max_new_tokens=POSITIONS),
                            timeout=60).adapter_name == "alpha"
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Predict(request_for("vqa", "alpha", max_new_tokens=POSITIONS + 1), timeout=60)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = excinfo.value.details()
    assert message.startswith(f"max_new_tokens {POSITIONS + 1}")
    assert f"at most {POSITIONS} new tokens for task 'vqa'" in message
