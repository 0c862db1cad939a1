"""VL-T5 / VL-BART's encoder semantics (`visual_semantics="vlt5"`) against a re-statement of
their equations (`paper_reference.RowReference.encoder`): T5's relative bias only between
text tokens, BART's positions and embedding LayerNorm on text only, the object-order rows
of the shared embedding; and "plain" (saved backbones) unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from modeling_helpers import random_batch
from paper_reference import RowReference
from test_layer_reference import reference_sets
from transformers.models.t5.modeling_t5 import T5LayerNorm

from modeling.backbone import VLBackbone
from modeling.bank import build_bank
from modeling.config import PRESETS, BackboneConfig, preset
from modeling.kernels import RowIndex
from modeling.visual import VisualProjection, object_order_ids

TOLERANCE = 1e-5
LENGTHS = [5, 2, 7, 4, 3, 6, 1]


@pytest.fixture(scope="module", params=["tiny-vl-t5", "tiny-vl-bart", "tiny", "tiny-bart"])
def any_backbone(request) -> VLBackbone:
    return VLBackbone.from_config(preset(request.param), seed=2)


def _reference_encoder(backbone, batch, sets, slots) -> list[torch.Tensor]:
    """Each row's encoder output [n, d] from the reference, visual tokens included."""
    out = []
    for row, slot in enumerate(slots):
        ref = RowReference(backbone, sets[slot])
        length = int(batch.text_mask[row].sum())
        with torch.no_grad():
            visual = ref.visual(batch.visual[row], batch.image_order[row])
            out.append(ref.encoder(batch.input_ids[row, :length], visual))
    return out


def _assert_rows_match(hidden, mask, expected) -> None:
    for row, reference in enumerate(expected):
        assert int(mask[row].sum()) == reference.shape[0]
        diff = float((hidden[row, :reference.shape[0]] - reference).abs().max())
        assert diff <= TOLERANCE * (1 + float(reference.abs().max())), (row, diff)


def test_bare_encoder_computes_the_papers_equations_per_row(any_backbone):
    batch = random_batch(any_backbone, LENGTHS, visual_tokens=6, seed=4)
    with torch.no_grad():
        hidden, mask = any_backbone.encode(batch)
    _assert_rows_match(hidden, mask, _reference_encoder(any_backbone, batch,
                                                        [None] * len(LENGTHS),
                                                        [0] * len(LENGTHS)))


def test_encoder_with_mixed_adapters_and_prompts_computes_the_papers_equations(any_backbone):
    """Prompt rows too: VL-Adapter's prompts share T5's text positions and get none in
    BART (normalised with the text); every serve form on the row's own adapter set."""
    sets = reference_sets(any_backbone, "gelu", "relu", seed=5)
    slots = list(range(len(sets)))
    lengths = LENGTHS[:len(slots)]
    batch = random_batch(any_backbone, lengths, visual_tokens=6, seed=6)
    bank = build_bank(sets, any_backbone.frozen_tensors(), any_backbone.config.d_model,
                      torch.zeros(()))
    with torch.no_grad():
        hidden, mask = any_backbone.encode(batch, bank, RowIndex.of(torch.tensor(slots)))
    _assert_rows_match(hidden, mask, _reference_encoder(any_backbone, batch, sets, slots))


@pytest.mark.parametrize("name", ["tiny-vl-t5", "tiny-vl-bart"])
def test_the_reference_without_the_papers_semantics_misses_by_far(name):
    """Guard: the reference stating "plain" (positions on every token, no object order)
    misses the papers' encoder by far more than the tolerance, so the tests above can fail."""
    backbone = VLBackbone.from_config(preset(name), seed=2)
    batch = random_batch(backbone, [4, 6], visual_tokens=6, seed=7)
    with torch.no_grad():
        hidden, _ = backbone.encode(batch)
        for row in range(batch.size):
            ref = RowReference(backbone, None)
            ref.papers = False
            length = int(batch.text_mask[row].sum())
            plain = ref.encoder(batch.input_ids[row, :length],
                                ref.visual(batch.visual[row], batch.image_order[row]))
            assert float((hidden[row, :plain.shape[0]] - plain).abs().max()) > 1e-2


def test_visual_tokens_carry_no_text_position():
    """VL-T5: the relative bias the first layer hands to every layer is zero for every pair
    with a visual token, and T5's own bias between the text tokens."""
    backbone = VLBackbone.from_config(preset("tiny-vl-t5"), seed=2)
    attention = backbone.lm.encoder.block[0].layer[0].SelfAttention
    seen = {}

    def record(module, args, kwargs, output):
        seen["bias"] = output[1]

    handle = attention.register_forward_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            backbone.encode(random_batch(backbone, [3], visual_tokens=4, seed=1))
    finally:
        handle.remove()
    bias = seen["bias"][0]  # [heads, 7, 7]: 3 text tokens, then 4 visual tokens
    assert torch.equal(bias[:, 3:, :], torch.zeros_like(bias[:, 3:, :]))
    assert torch.equal(bias[:, :, 3:], torch.zeros_like(bias[:, :, 3:]))
    assert torch.equal(bias[:, :3, :3], attention.compute_bias(3, 3)[0])


def test_object_order_counts_tokens_within_each_image():
    order = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 0, 1, 0]])
    assert object_order_ids(order, 2).tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 1, 2]]


def test_vl_t5_normalises_its_projection_with_rms_norm_and_vl_bart_with_layer_norm():
    t5 = VLBackbone.from_config(preset("tiny-vl-t5"))
    bart = VLBackbone.from_config(preset("tiny-vl-bart"))
    assert isinstance(t5.visual.feat_norm, T5LayerNorm)
    assert isinstance(t5.visual.box_norm, T5LayerNorm)
    assert type(bart.visual.feat_norm) is torch.nn.LayerNorm
    assert "feat_norm.bias" not in t5.visual.state_dict()


def test_a_config_saved_before_the_switch_loads_plain_and_keeps_its_fingerprint(tmp_path):
    """A saved `vladapter_backbone.json` has no visual_semantics: it loads as "plain", and
    "plain" is not written, so the config (and the fingerprint over it) stays the same."""
    before = preset("tiny").to_dict()
    assert "visual_semantics" not in before
    assert BackboneConfig.from_dict(before).visual_semantics == "plain"
    assert BackboneConfig.from_dict(before).to_dict() == before
    papers = preset("tiny-vl-t5").to_dict()
    assert papers["visual_semantics"] == "vlt5"
    model = VLBackbone.from_config(preset("tiny-vl-bart"), seed=1)
    model.save_pretrained(tmp_path)
    loaded = VLBackbone.from_pretrained(tmp_path)
    assert loaded.config.visual_semantics == "vlt5"
    assert loaded.fingerprint() == model.fingerprint()


def test_an_unknown_semantics_is_refused():
    with pytest.raises(ValueError, match="visual_semantics"):
        BackboneConfig.from_dict({**preset("tiny").to_dict(), "visual_semantics": "vl-t5"})


@pytest.mark.parametrize("name", ["tiny-vl-t5", "tiny-vl-bart"])
def test_a_deep_copy_keeps_the_papers_semantics(name):
    """Full fine-tuning trains a deep copy of the backbone: the copy's hooks read the copy's
    token kinds, so it encodes as the original does (not as "plain")."""
    backbone = VLBackbone.from_config(preset(name), seed=2)
    twin = copy.deepcopy(backbone)
    batch = random_batch(backbone, [3, 5], visual_tokens=4, seed=8)
    with torch.no_grad():
        assert torch.equal(twin.encode(batch)[0], backbone.encode(batch)[0])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_papers_presets_have_the_papers_semantics_and_ours_stay_plain(name):
    """vl-t5-* / vl-bart-* (and their tiny sizes) encode as the papers; built on meta."""
    with torch.device("meta"):
        backbone = VLBackbone(preset(name))
    papers = name.startswith(("vl-", "tiny-vl-"))
    assert backbone.config.visual_semantics == ("vlt5" if papers else "plain")
    assert (backbone.joint_encoder is not None) == papers
    assert backbone.visual.object_order == papers
    rms = papers and backbone.config.lm_type == "t5"
    assert isinstance(backbone.visual.feat_norm, T5LayerNorm) == rms


def test_more_visual_tokens_than_object_order_rows_are_refused():
    projection = VisualProjection(4, 8, object_order=True)
    with pytest.raises(ValueError, match="4 visual tokens in a row"):
        projection(torch.randn(1, 4, 4), torch.zeros(1, 4, dtype=torch.long),
                   token_embedding=torch.randn(3, 8))
