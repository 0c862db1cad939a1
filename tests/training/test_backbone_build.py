"""`train-adapter backbone build | info` on tiny Hugging Face folders of the parts, and the
built folder through `modeling.families.load_backbone`: the user's weights are the ones
used, the tower computes what the Hugging Face model computes, and every refusal is one
line naming the folder and what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hf_parts import TOWER, lm_model, save_lm, save_tower, vision_model
from safetensors.torch import load_file, save_file

from modeling.families import load_backbone
from modeling.tokenizer import build_word_tokenizer
from modeling.visual import pool_grid
from training.cli import main

WORDS = ["what", "color", "is", "it", "red", "blue"]


def exit_code(argv: list[str]) -> int:
    """train-adapter's exit code (a usage error exits from the parser)."""
    try:
        return main(argv)
    except SystemExit as exited:
        return int(exited.code)


def build(capsys, *args: str) -> tuple[int, str, str]:
    code = exit_code(["backbone", "build", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parts")
    for kind in ("t5", "flan-t5", "bart"):
        save_lm(root / kind, kind, WORDS)
    for kind in ("clip", "clip_vision", "siglip_vision", "siglip"):
        save_tower(root / kind, kind)
    return root


@pytest.mark.parametrize(("tower", "lm"), [("clip", "t5"), ("clip_vision", "bart"),
                                           ("siglip_vision", "flan-t5"), ("siglip", "bart")])
def test_built_backbone_runs_the_users_weights(parts, tmp_path, capsys, tower, lm):
    code, out, err = build(capsys, "--vision", str(parts / tower), "--lm", str(parts / lm),
                           "--out", str(tmp_path / "bb"))
    assert code == 0, err
    backbone = load_backbone(tmp_path / "bb")
    assert f"fingerprint: {backbone.fingerprint()}" in out.splitlines()
    source = lm_model(parts / lm, lm).state_dict()
    assert set(backbone.lm.state_dict()) == set(source)
    for name, tensor in backbone.lm.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    pixels = torch.randn(2, 3, TOWER["image_size"], TOWER["image_size"],
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = vision_model(parts / tower, tower)(pixel_values=pixels)
    patches = hidden.last_hidden_state
    patches = patches if tower.startswith("siglip") else patches[:, 1:]  # CLIP's CLS
    assert patches.shape[1] == (TOWER["image_size"] // TOWER["patch_size"]) ** 2
    expected = pool_grid(patches, backbone.config.image_grid)
    assert torch.equal(backbone.encode_images(pixels), expected)
    assert backbone.config.vision.tower == tower.split("_")[0]
    assert backbone.tokenizer("what color")["input_ids"] == \
        build_word_tokenizer(WORDS, backbone.config.lm_type)("what color")["input_ids"]


def test_features_build_has_no_tower_and_the_seed_draws_the_projection(parts, tmp_path,
                                                                      capsys):
    printed = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        code, out, err = build(capsys, "--features", "2048", "--lm", str(parts / "bart"),
                               "--out", str(tmp_path / name), "--seed", seed)
        assert code == 0, err
        printed.append(out.splitlines()[-1])
    backbone = load_backbone(tmp_path / "a")
    assert backbone.vision is None and backbone.config.feat_dim == 2048
    assert backbone.config.image_grid == 6
    assert printed[0] == printed[1] != printed[2]
    other = load_backbone(tmp_path / "c")
    assert not torch.equal(backbone.visual.feat_linear.weight, other.visual.feat_linear.weight)


def test_tokenizer_folder_overrides_the_lm_folders(parts, tmp_path, capsys):
    words = tmp_path / "words"
    override = build_word_tokenizer(["green", "cube"], "t5")
    override.save_pretrained(words)
    code, _, err = build(capsys, "--features", "8", "--lm", str(parts / "t5"),
                         "--tokenizer", str(words), "--out", str(tmp_path / "bb"))
    assert code == 0, err
    tokenizer = load_backbone(tmp_path / "bb").tokenizer
    assert tokenizer("green cube")["input_ids"] == override("green cube")["input_ids"]
    assert tokenizer.convert_tokens_to_ids("green") != tokenizer.unk_token_id


def _no_tokenizer(parts: Path, tmp_path: Path) -> list[str]:
    bare = tmp_path / "bare-t5"
    lm_model(parts / "t5", "t5").save_pretrained(bare)
    return ["--features", "8", "--lm", str(bare)]


def _no_weights(parts: Path, tmp_path: Path) -> list[str]:
    only_config = tmp_path / "config-only"
    only_config.mkdir()
    (only_config / "config.json").write_text((parts / "t5" / "config.json").read_text())
    return ["--features", "8", "--lm", str(only_config)]


def _tensor_missing(parts: Path, tmp_path: Path) -> list[str]:
    """A CLIP vision folder whose weights file lacks one tensor of the tower."""
    folder = tmp_path / "clip-part"
    shutil.copytree(parts / "clip_vision", folder)
    weights = load_file(folder / "model.safetensors")
    missing = next(name for name in sorted(weights) if "patch_embedding" in name)
    save_file({k: v for k, v in weights.items() if k != missing},
              folder / "model.safetensors", metadata={"format": "pt"})
    return ["--vision", str(folder), "--lm", str(parts / "t5")]


def _no_config(parts: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return ["--vision", str(tmp_path / "empty"), "--lm", str(parts / "t5")]


def _full_out(parts: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    return ["--features", "8", "--lm", str(parts / "t5")]


# case -> (argument maker, what the one line says; {parts} / {tmp} filled in)
REFUSALS = {
    "t5 as vision": (lambda p, t: ["--vision", str(p / "t5"), "--lm", str(p / "bart")],
                     "{parts}/t5: config.json model_type 't5' is not a vision tower we take "
                     "as --vision (clip, clip_vision_model, siglip, siglip_vision_model); a "
                     "'t5' folder goes to --lm"),
    "clip as lm": (lambda p, t: ["--features", "8", "--lm", str(p / "clip")],
                   "{parts}/clip: config.json model_type 'clip' is not a language model we "
                   "take as --lm (t5, bart); a 'clip' folder goes to --vision"),
    "no config.json": (_no_config, "{tmp}/empty: no config.json: not a Hugging Face model "
                                   "folder (given as --vision)"),
    "no such folder": (lambda p, t: ["--features", "8", "--lm", str(t / "nowhere")],
                       "{tmp}/nowhere: no such folder (given as --lm)"),
    "no tokenizer files": (_no_tokenizer, "{tmp}/bare-t5: no tokenizer files"),
    "no weights": (_no_weights, "{tmp}/config-only: the t5 language model does not load"),
    "a tensor missing": (_tensor_missing, "{tmp}/clip-part: no weights for 1 tensor(s) of the "
                                          "clip vision tower (first: "),
    "grid larger than patches": (
        lambda p, t: ["--vision", str(p / "clip"), "--lm", str(p / "t5"), "--image-grid", "5"],
        "--image-grid 5 is larger than the tower's 4x4 patch grid"),
    "out not empty": (_full_out, "{tmp}/out: --out exists and is not an empty folder"),
    "vision and features": (
        lambda p, t: ["--vision", str(p / "clip"), "--features", "8", "--lm", str(p / "t5")],
        "argument --features: not allowed with argument --vision"),
    "neither vision nor features": (lambda p, t: ["--lm", str(p / "t5")],
                                    "one of the arguments --vision --features is required"),
    "features not positive": (lambda p, t: ["--features", "0", "--lm", str(p / "t5")],
                              "expected a positive integer, got '0'"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_build_refusal_is_one_line_naming_what_is_wrong(parts, tmp_path, capsys, case):
    make, expected = REFUSALS[case]
    args = make(parts, tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code, _, err = build(capsys, *args)
    err = err.strip()
    assert code == 2
    assert err.count("\n") == 0, err
    assert expected.format(parts=parts, tmp=tmp_path) in err, err
    if case == "out not empty":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_info_reports_parts_sizes_and_the_fingerprint(parts, tmp_path, capsys):
    code, out, err = build(capsys, "--vision", str(parts / "siglip_vision"), "--lm",
                           str(parts / "bart"), "--out", str(tmp_path / "bb"))
    assert code == 0, err
    assert main(["backbone", "info", str(tmp_path / "bb"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    backbone = load_backbone(tmp_path / "bb")
    assert info["fingerprint"] == backbone.fingerprint()
    assert f"fingerprint: {info['fingerprint']}" in out
    assert info["family"] == "vl"
    assert info["vision"]["type"] == "siglip" and info["vision"]["image_size"] == 32
    assert info["lm"] == {"type": "bart", "d_model": 32, "encoder_layers": 1,
                          "decoder_layers": 1, "heads": 4, "vocab_size": 512}
    assert info["tokenizer"]["vocab_size"] == len(WORDS) + 4
    counts = info["parameters"]
    assert counts["vision"] == sum(p.numel() for p in backbone.vision.parameters())
    assert counts["lm"] == sum(p.numel() for p in backbone.lm.parameters())
    assert counts["total"] == sum(p.numel() for p in backbone.parameters()) == \
        counts["vision"] + counts["visual_projection"] + counts["lm"]
    assert info["feat_dim"] == 32 and info["image_grid"] == 4


def test_info_of_a_preset_reports_sizes_without_a_fingerprint(capsys):
    assert main(["backbone", "info", "vl-t5-base"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "backbone     vl-t5-base (family vl, preset vl-t5-base)"
    assert lines[1].startswith("vision       features; feat_dim 2048, 6x6 tokens per image")
    assert lines[-1].startswith("fingerprint  none")
