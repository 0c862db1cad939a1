"""The frozen backbone: plain Hugging Face behaviour when idle, save/load, visual inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from modeling_helpers import random_batch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BartForConditionalGeneration,
    ByT5Tokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.t5.modeling_t5 import T5LayerNorm

from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import build_bank
from modeling.config import preset
from modeling.kernels import RowIndex
from modeling.serve_forms import AdapterSet
from modeling.sites import layer_norm_names
from modeling.tokenizer import build_word_tokenizer
from modeling.visual import fit_frames, video_tokens

WORDS = ["red", "blue", "circle", "what", "is"]


def test_idle_hooks_leave_the_lm_identical_to_plain_hugging_face(backbone):
    cls = T5ForConditionalGeneration if backbone.config.lm_type == "t5" else \
        BartForConditionalGeneration
    plain = cls(backbone.lm.config)
    plain.load_state_dict(backbone.lm.state_dict())
    plain.eval()
    vocab = min(500, backbone.lm.config.vocab_size)
    ids = torch.randint(4, vocab, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    dec = torch.randint(4, vocab, (2, 3))
    with torch.no_grad():
        ours = backbone.lm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        theirs = plain(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_save_and_load_keep_weights_and_fingerprint(tmp_path):
    model = VLBackbone.from_config(preset("tiny"), seed=3,
                                   tokenizer=build_word_tokenizer(WORDS, "t5", 512))
    model.save_pretrained(tmp_path)
    loaded = VLBackbone.from_pretrained(tmp_path)
    assert loaded.fingerprint() == model.fingerprint()
    batch = random_batch(model, [4, 2])
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert all(not p.requires_grad for p in loaded.parameters())


def test_fingerprint_changes_when_one_weight_changes():
    model = VLBackbone.from_config(preset("tiny"), seed=3)
    before = model.fingerprint()
    with torch.no_grad():
        model.visual.feat_linear.bias[0] += 1
    assert model.fingerprint() != before


def _bpe(merges: list[tuple[str, str]], eos: bool = True) -> PreTrainedTokenizerFast:
    """A tiny BPE tokenizer over a fixed vocabulary; `merges` and `eos` vary."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4, "c": 5, "ab": 6, "bc": 7}
    core = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos:
        core.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                            special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


# Pairs of tokenizers and a text they map to different ids (None: they differ in pad id).
TOKENIZER_PAIRS = {
    "vocabulary": (lambda: (build_word_tokenizer(WORDS, "t5"),
                            build_word_tokenizer(WORDS + ["green"], "t5")), "green"),
    "merges": (lambda: (_bpe([("a", "b")]), _bpe([("b", "c")])), "abc"),
    "post-processor": (lambda: (_bpe([("a", "b")]), _bpe([("a", "b")], eos=False)), "abc"),
    "special token role": (lambda: (
        build_word_tokenizer(WORDS, "t5"),
        PreTrainedTokenizerFast(tokenizer_object=build_word_tokenizer(WORDS, "t5")
                                .backend_tokenizer, pad_token="<unk>", eos_token="</s>",
                                unk_token="<unk>")), None),
    "added tokens": (lambda: (ByT5Tokenizer(extra_ids=4), ByT5Tokenizer(extra_ids=8)),
                     "<extra_id_6>"),
}


@pytest.fixture(scope="module")
def twin() -> VLBackbone:
    """One tiny backbone whose tokenizer the tests swap (its weights never change)."""
    return VLBackbone.from_config(preset("tiny"), seed=3)


def _fingerprint_with(backbone: VLBackbone, tokenizer) -> str:
    backbone.tokenizer = tokenizer
    return backbone.fingerprint()


@pytest.mark.parametrize("difference", sorted(TOKENIZER_PAIRS))
def test_backbones_equal_but_for_the_tokenizer_have_different_fingerprints(twin, difference):
    build, text = TOKENIZER_PAIRS[difference]
    first, second = build()
    if text is None:
        assert first.pad_token_id != second.pad_token_id
    else:
        assert first(text)["input_ids"] != second(text)["input_ids"]
    assert _fingerprint_with(twin, first) != _fingerprint_with(twin, second)


def test_a_backbone_without_tokenizer_differs_from_one_with(twin):
    assert _fingerprint_with(twin, None) != \
        _fingerprint_with(twin, build_word_tokenizer(WORDS, "t5"))


@pytest.mark.parametrize("build", [lambda: build_word_tokenizer(WORDS, "t5"),
                                   lambda: ByT5Tokenizer(extra_ids=4)],
                         ids=["fast", "python"])
def test_fingerprint_depends_on_the_tokenizer_content_not_the_object(twin, build, tmp_path):
    """A rebuilt tokenizer, a saved-and-loaded one and one a padded, truncating call has
    run through all give the fingerprint of the original."""
    original = build()
    expected = _fingerprint_with(twin, original)
    assert _fingerprint_with(twin, build()) == expected
    original(["red blue", "circle"], padding="max_length", truncation=True, max_length=3)
    assert _fingerprint_with(twin, original) == expected
    original.save_pretrained(tmp_path)
    reloaded = type(original).from_pretrained(tmp_path)
    assert _fingerprint_with(twin, reloaded) == expected


FINGERPRINT_SCRIPT = """
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.tokenizer import build_word_tokenizer
tokenizer = build_word_tokenizer({words!r}, "t5", 512)
print(VLBackbone.from_config(preset("tiny"), seed=3, tokenizer=tokenizer).fingerprint())
"""


def test_fingerprint_is_the_same_in_another_process():
    """Set and dict order vary with the hash seed of each process; the fingerprint must not."""
    model = VLBackbone.from_config(preset("tiny"), seed=3,
                                   tokenizer=build_word_tokenizer(WORDS, "t5", 512))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", FINGERPRINT_SCRIPT.format(words=WORDS)],
                            capture_output=True, text=True, env=env, timeout=300, check=True)
    assert result.stdout.strip() == model.fingerprint()


def test_images_become_pooled_grid_tokens_and_frames_are_padded():
    model = VLBackbone.from_config(preset("tiny"), seed=0)
    pixels = torch.randn(3, 3, 32, 32)
    assert model.encode_images(pixels).shape == (3, 4, model.config.feat_dim)
    tokens, valid = model.encode_frames(pixels)
    assert tokens.shape == (model.config.max_frames, model.config.feat_dim)
    assert valid.tolist() == [True] * 3 + [False] * (model.config.max_frames - 3)
    pooled, valid = fit_frames(torch.randn(100, 5), 8)
    assert pooled.shape == (8, 5) and bool(valid.all())


class _PatchedT5Norm(T5LayerNorm):
    """T5's RMS norm under another class name, as a patched or fused norm would be."""


def test_a_t5_norm_under_another_class_name_is_a_layer_norm_whose_override_applies():
    """LayerNorms are recognised by type in one place (`modeling.sites.is_layer_norm`), for
    the trainable-tensor sites and the hooks alike, not by a class-name string."""
    config = preset("tiny")
    torch.manual_seed(0)
    lm = T5ForConditionalGeneration(T5Config(**config.lm))
    lm.encoder.final_layer_norm = _PatchedT5Norm(config.d_model)  # weight: ones
    model = VLBackbone(config, lm=lm)
    name = "lm.encoder.final_layer_norm"
    assert name in layer_norm_names(model)
    doubled = AdapterSet(overrides={f"{name}.weight": torch.full((config.d_model,), 2.0)})
    bank = build_bank([doubled], model.frozen_tensors(), config.d_model,
                            next(model.parameters()))
    batch = random_batch(model, [3, 2])
    with torch.no_grad():
        bare, _ = model.encode(batch)
        adapted, _ = model.encode(batch, bank, RowIndex.of(torch.zeros(2, dtype=torch.long)))
    assert torch.allclose(adapted, 2 * bare)


def test_video_tokens_average_each_frame_then_pool_or_pad_to_max_frames():
    """Frames of any token count (a client may send 1-token features) become one vector each;
    the backbone's own frame path is this function over the tower's grids."""
    frames = [torch.full((1, 3), 1.0), torch.tensor([[2.0] * 3, [4.0] * 3]), torch.zeros(4, 3)]
    tokens, valid = video_tokens(frames, 4)
    assert tokens.tolist() == [[1.0] * 3, [3.0] * 3, [0.0] * 3, [0.0] * 3]
    assert valid.tolist() == [True, True, True, False]
    tokens, valid = video_tokens(frames, 2)  # 3 frames into 2 segments, averaged
    assert torch.allclose(tokens, torch.tensor([[2.0] * 3, [1.5] * 3])) and bool(valid.all())
    with pytest.raises(ValueError, match="at least one frame"):
        video_tokens([], 4)
    model = VLBackbone.from_config(preset("tiny"), seed=0)
    pixels = torch.randn(3, 3, 32, 32)
    expected, expected_valid = video_tokens(model.encode_images(pixels), model.config.max_frames)
    tokens, valid = model.encode_frames(pixels)
    assert torch.equal(tokens, expected) and torch.equal(valid, expected_valid)


def test_a_batch_moved_in_a_dtype_casts_its_features_and_boxes_but_not_ids_or_masks():
    """`VLBatch.to(device, dtype)`: what the engine hands a bf16 backbone."""
    rows, text, visual = 2, 3, 4
    batch = VLBatch(input_ids=torch.ones(rows, text, dtype=torch.long),
                    text_mask=torch.ones(rows, text, dtype=torch.bool),
                    visual=torch.randn(rows, visual, 8),
                    visual_mask=torch.ones(rows, visual, dtype=torch.bool),
                    image_order=torch.zeros(rows, visual, dtype=torch.long),
                    boxes=torch.rand(rows, visual, 5),
                    labels=torch.ones(rows, 2, dtype=torch.long))
    moved = batch.to("cpu", torch.bfloat16)
    assert moved.visual.dtype == moved.boxes.dtype == torch.bfloat16
    assert torch.equal(moved.visual, batch.visual.to(torch.bfloat16))
    assert moved.input_ids.dtype == moved.image_order.dtype == moved.labels.dtype == torch.long
    assert moved.text_mask.dtype == moved.visual_mask.dtype == torch.bool
    assert batch.to("cpu").visual.dtype == torch.float32  # no dtype: types kept
