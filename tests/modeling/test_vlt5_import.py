"""Importing released VL-T5 / VL-BART checkpoints (`train-adapter backbone build --from-vlt5`):
tiny state dicts under the papers' key names, written with torch.save of plain tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from modeling.backbone import VLBackbone
from modeling.families.vlt5_import import import_vlt5
from modeling.tokenizer import build_word_tokenizer
from training.cli import main

D_MODEL, FEAT_DIM = 32, 24
WORDS = ["a", "cat", "dog", "on", "the", "mat", "what", "is"]
# A key of old VL-T5 files that today's T5 has no module for: reported, not used.
STRAY = {"t5": "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
         "bart": "model.encoder.visual_embedding.unused_scale"}


def _lm(lm_type: str, vocab: int):
    if lm_type == "t5":
        return T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=D_MODEL, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    return BartForConditionalGeneration(BartConfig(
        vocab_size=vocab, d_model=D_MODEL, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64))


class Release:
    """A paper-style checkpoint and the Hugging Face LM folder it started from."""

    def __init__(self, root: Path, lm_type: str):
        tokenizer = build_word_tokenizer(WORDS, lm_type)
        self.lm_type, self.lm_dir, self.file = lm_type, root / f"{lm_type}-base", root / "E30.pth"
        self.vocab = len(tokenizer) + 200  # + <extra_id_*> and <vis_extra_id_*>
        _lm(lm_type, len(tokenizer)).save_pretrained(self.lm_dir)  # the vocab before resizing
        tokenizer.save_pretrained(self.lm_dir)
        torch.manual_seed(7)
        state = dict(_lm(lm_type, self.vocab).state_dict())
        shared = state["shared.weight" if lm_type == "t5" else "model.shared.weight"]
        prefix = "encoder." if lm_type == "t5" else "model.encoder."
        vis = {"feat_embedding.0.weight": torch.randn(D_MODEL, FEAT_DIM),
               "feat_embedding.0.bias": torch.randn(D_MODEL),
               "feat_embedding.1.weight": 1 + torch.rand(D_MODEL),
               "absolute_vis_pos_embedding.0.weight": torch.randn(D_MODEL, 5),
               "absolute_vis_pos_embedding.0.bias": torch.randn(D_MODEL),
               "absolute_vis_pos_embedding.1.weight": 1 + torch.rand(D_MODEL),
               "img_order_embedding.weight": torch.randn(2, D_MODEL),
               "obj_order_embedding.weight": shared}
        if lm_type == "bart":  # VL-BART's visual norms are LayerNorms (with a bias)
            vis["feat_embedding.1.bias"] = torch.randn(D_MODEL)
            vis["absolute_vis_pos_embedding.1.bias"] = torch.randn(D_MODEL)
        state.update({f"{prefix}visual_embedding.{k}": v for k, v in vis.items()})
        state[STRAY[lm_type]] = torch.ones(3)
        self.state = {k: v.detach().clone() for k, v in state.items()}
        # As saved from a DistributedDataParallel model, with the pre-training name.
        self.save({f"module.{k.replace('encoder.', 'vis_encoder.', 1)}"
                   if k.startswith("encoder.") else f"module.{k}": v
                   for k, v in self.state.items()})

    def save(self, state: dict) -> None:
        torch.save(state, self.file)

    def visual(self, name: str) -> torch.Tensor:
        prefix = "encoder." if self.lm_type == "t5" else "model.encoder."
        return self.state[f"{prefix}visual_embedding.{name}"]


@pytest.fixture(params=["t5", "bart"])
def release(request, tmp_path) -> Release:
    return Release(tmp_path, request.param)


def _norm(release: Release, x: torch.Tensor, which: str) -> torch.Tensor:
    """VL-T5: T5LayerNorm (RMS, eps 1e-6); VL-BART: nn.LayerNorm (eps 1e-5)."""
    weight = release.visual(f"{which}.1.weight")
    if release.lm_type == "t5":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + release.visual(f"{which}.1.bias")


def test_a_release_imports_with_its_weights_and_the_papers_visual_embedding(release):
    backbone, report = import_vlt5(release.file, release.lm_dir)
    assert backbone.config.visual_semantics == "vlt5"
    assert (backbone.config.lm_type, backbone.config.feat_dim) == (release.lm_type, FEAT_DIM)
    lm_state = backbone.lm.state_dict()
    for key, tensor in release.state.items():
        if key in lm_state:
            assert torch.equal(lm_state[key], tensor), key
    assert report.unmapped == [STRAY[release.lm_type]]
    # VisualEmbedding.forward of the papers, written out from the checkpoint's tensors.
    feats, boxes = torch.randn(1, 5, FEAT_DIM), torch.rand(1, 5, 5)
    order = torch.tensor([[0, 0, 0, 1, 1]])
    shared = backbone.lm.get_input_embeddings().weight
    objects = torch.tensor([0, 1, 2, 0, 1])
    expected = (_norm(release, feats @ release.visual("feat_embedding.0.weight").T
                      + release.visual("feat_embedding.0.bias"), "feat_embedding")
                + _norm(release, boxes @ release.visual("absolute_vis_pos_embedding.0.weight").T
                        + release.visual("absolute_vis_pos_embedding.0.bias"),
                        "absolute_vis_pos_embedding")
                + release.visual("img_order_embedding.weight")[order]
                + release.state["shared.weight" if release.lm_type == "t5" else
                                "model.shared.weight"][release.vocab - 1 - objects])
    with torch.no_grad():
        got = backbone.visual(feats, order, boxes, token_embedding=shared)
    assert (got - expected).abs().max() <= 1e-5 * (1 + expected.abs().max())


def test_the_tokenizer_gets_the_papers_tokens_at_the_object_order_ids(release):
    backbone, report = import_vlt5(release.file, release.lm_dir)
    tokenizer = backbone.tokenizer
    assert report.tokenizer and len(tokenizer) == release.vocab
    ids = tokenizer.convert_tokens_to_ids([f"<vis_extra_id_{j}>" for j in range(100)])
    assert ids == [release.vocab - 1 - j for j in range(100)]


def test_backbone_build_writes_a_folder_that_loads_with_the_printed_fingerprint(
        release, tmp_path, capsys):
    out = tmp_path / "built"
    assert main(["backbone", "build", "--from-vlt5", str(release.file), "--lm",
                 str(release.lm_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"unmapped: 1 checkpoint key(s) not used: {STRAY[release.lm_type]}" in printed
    loaded = VLBackbone.from_pretrained(out)
    assert f"fingerprint: {loaded.fingerprint()}" in printed
    assert loaded.config.visual_semantics == "vlt5"
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))


class _Planted:
    """Unpickling it would create `marker`: the import must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _build(release: Release, out: Path) -> int:
    return main(["backbone", "build", "--from-vlt5", str(release.file), "--lm",
                 str(release.lm_dir), "--out", str(out)])


def test_a_file_that_needs_a_full_unpickle_is_refused_and_never_unpickled(
        release, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    release.save({**release.state, "args": _Planted(marker)})
    assert _build(release, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "unpickle" in err
    assert "Unsupported global" in err  # what torch's weights-only reader refused
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("problem", ["missing", "shape", "family", "object order", "not torch"])
def test_an_unusable_checkpoint_is_refused_in_one_line(release, tmp_path, capsys, problem):
    state = dict(release.state)
    shared = "shared.weight" if release.lm_type == "t5" else "model.shared.weight"
    first_layer_norm = next(k for k in state if "layer_norm" in k and "visual" not in k)
    if problem == "missing":
        del state[first_layer_norm]
    elif problem == "shape":
        state[first_layer_norm] = torch.ones(D_MODEL + 1)
    elif problem == "family":
        state = {("model." + k if release.lm_type == "t5" else k.removeprefix("model.")): v
                 for k, v in state.items()}
    elif problem == "object order":
        prefix = "encoder." if release.lm_type == "t5" else "model.encoder."
        state[f"{prefix}visual_embedding.obj_order_embedding.weight"] = state[shared] + 1
    release.save(state)
    if problem == "not torch":
        release.file.write_bytes(b"not a checkpoint")
    assert _build(release, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    expected = {"missing": first_layer_norm, "shape": "shape", "family": "weights",
                "object order": "shared token embedding", "not torch": "refused"}[problem]
    assert expected in err, err


def test_an_existing_output_folder_is_never_replaced(release, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _build(release, out) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
