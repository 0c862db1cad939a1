"""Streamed text is exact through a real server: PredictStream sends no empty piece and the
pieces of every stream (greedy, beam search, candidate scoring) join to the final text,
also when a BART byte-level token ends in the middle of a character."""

from __future__ import annotations

import grpc
import pytest
from serving_helpers import RECIPES, random_adapter, request_for
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from adapters_registry import Registry
from modeling.backbone import VLBackbone
from modeling.config import preset
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact

# One byte-level token holding the bytes 0xA9 0x20 0xC3: the end of "é" (C3 A9), a space,
# and the start of the next "é". Generated over and over, each "é" spans two tokens.
SPLIT_CHARACTER_TOKEN = "©ĠÃ"


def stream(stub, message) -> tuple[list[str], str]:
    """(the streamed pieces, the final text) of one PredictStream call."""
    chunks = list(stub.PredictStream(message, timeout=60))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    return [c.token_text for c in chunks[:-1]], chunks[-1].response.text


@pytest.mark.parametrize(("task", "beams"), [("caption", 0), ("caption", 3), ("vqa", 2),
                                             ("nlvr2", 0), ("tvqa", 0)])
def test_pieces_of_every_stream_join_to_its_final_text(inference, task, beams):
    """Beam search streams its best hypothesis as one piece at the end (it is only known
    then); scoring tasks stream the chosen candidate as one piece."""
    message = request_for(task, "alpha", seed=31, num_beams=beams, max_new_tokens=8)
    pieces, final = stream(inference, message)
    assert final, "the tiny model answers some text here"
    assert all(pieces)
    assert "".join(pieces) == final
    assert final == inference.Predict(message, timeout=60).text


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """BART's kind of tokenizer: byte-level BPE (bytes as symbols, BART's special ids)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    symbols = specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + [SPLIT_CHARACTER_TOKEN]
    core = Tokenizer(models.BPE({s: i for i, s in enumerate(symbols)}, []))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def bart_server(tmp_path_factory):
    """tiny-bart with the byte-level tokenizer, its logits biased to always generate
    SPLIT_CHARACTER_TOKEN, serving one adapter `bart`."""
    tokenizer = byte_level_tokenizer()
    backbone = VLBackbone.from_config(preset("tiny-bart"), seed=0, tokenizer=tokenizer)
    backbone.lm.final_logits_bias[0, tokenizer.convert_tokens_to_ids(SPLIT_CHARACTER_TOKEN)] \
        = 1e4
    base = tmp_path_factory.mktemp("bart-registry")
    registry = Registry(str(base / "store"))
    model = random_adapter(backbone, RECIPES["alpha"][0], ["caption"], seed=51)
    write_artifact(base / "bart", model, backbone, {})
    registry.publish(base / "bart", "bart")
    config = ServeConfig(registry=str(base / "store"), host="127.0.0.1", port=0, load=("bart",))
    server = Server(config, backbone=backbone).start()
    yield server
    server.stop(grace=5)


def test_byte_level_stream_holds_a_split_character_back_and_joins_exactly(bart_server):
    with grpc.insecure_channel(f"127.0.0.1:{bart_server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        pieces, final = stream(stub, request_for("caption", "bart", seed=1, max_new_tokens=6))
    # Six tokens: an orphan continuation byte (U+FFFD), five complete "é", an unfinished
    # lead byte at the end (U+FFFD), separated by spaces.
    assert final == "\ufffd" + " é" * 5 + " \ufffd"
    # Each piece ends where a later token cannot change it; the last one brings the rest.
    assert pieces == ["\ufffd", " é", " é", " é", " é", " é \ufffd"]
    assert "".join(pieces) == final
