"""A BLIP captioning folder served: the decoder continues BLIP's caption prompt
("a picture of") and the reply is the continuation alone, the text transformers'
`BlipForConditionalGeneration.generate(pixel_values, input_ids=prefix)` adds to it."""

from __future__ import annotations

import io

import grpc
import pytest
import torch
from family_helpers import blip_model
from PIL import Image
from serving_helpers import request_for

from adapters_registry import Registry
from modeling.families import blip
from modeling.inputs import image_processor, images_to_pixels
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel, MethodEntry
from modeling.tokenizer import SPECIALS, build_word_tokenizer
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact

PROMPT = "a picture of"
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(library model, tokenizer, channel) of a tiny BLIP captioning folder whose word
    tokenizer fills the vocabulary, serving an untrained LoRA (B = 0: the backbone's
    own output)."""
    root = tmp_path_factory.mktemp("blip-caption")
    model = blip_model("caption", "tiny", seed=3)
    with torch.no_grad():  # wider than BLIP's init, so captions depend on the image
        for param in model.text_decoder.parameters():
            param.mul_(8.0 if param.dim() >= 2 else 1.0)
    vocab = model.config.text_config.vocab_size
    words = [*PROMPT.split(), *[f"w{i}" for i in range(vocab)]]
    tokenizer = build_word_tokenizer(words[:vocab - len(SPECIALS["bert"])], "bert", vocab)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    backbone = blip.load(root / "model")
    adapter = AdapterModel([MethodEntry("lora", {"rank": 2}, "single")],
                           BackboneFacts.of(backbone), ["caption"])
    write_artifact(root / "zero", adapter, backbone, {})
    Registry(str(root / "store")).publish(root / "zero", "zero")
    server = Server(ServeConfig(registry=str(root / "store"), host="127.0.0.1", port=0,
                                load=("zero",)), backbone=backbone).start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield model, tokenizer, channel
    server.stop(grace=5)


@pytest.mark.parametrize("seed", [0, 1])
def test_served_blip_caption_is_the_library_continuation_of_its_prompt(served, seed):
    model, tokenizer, channel = served
    message = request_for("caption", "zero", seed=seed, max_new_tokens=NEW_TOKENS)
    reply = inference_pb2_grpc.InferenceStub(channel).Predict(message)

    image = Image.open(io.BytesIO(message.images[0].encoded))
    size = model.config.vision_config.image_size
    pixels = images_to_pixels([image], image_processor(size, "blip"))
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    start, sep = model.config.text_config.bos_token_id, model.config.text_config.sep_token_id
    with torch.no_grad():
        out = model.generate(pixel_values=pixels, input_ids=torch.tensor([[start, *prompt, sep]]),
                             max_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False,
                             min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0)
    library = tokenizer.decode(out[0, 1:], skip_special_tokens=True)  # prompt included
    continuation = tokenizer.decode(out[0, 1 + len(prompt):], skip_special_tokens=True)
    assert library == f"{PROMPT} {continuation}" and continuation
    assert reply.text == continuation.strip()
