"""The adapter benchmarks run on a backbone folder of every family through the backbone
interface: `peft_baselines` (its built-in check: our bank, PEFT's mixed batch and PEFT's
swap give the same logits, which the adapters move away from the bare backbone's) and
`mixed_adapters` (a batch shaped like one image of that family), on tiny Hugging Face
BLIP and Florence-2 folders saved with `save_pretrained`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from family_helpers import blip_model

from benchmarks import florence2_base, mixed_adapters, peft_baselines
from benchmarks.florence2_sizes import sized_config, write_random
from modeling.families import florence2, load_backbone

# family -> (writes a tiny folder under a root, visual tokens one image becomes there)
FOLDERS = {
    # BLIP ViT 32 px / 8 px patches: 16 patch states + the class token.
    "blip-vqa": (lambda root: _saved(blip_model("vqa", "tiny", seed=1), root), 17),
    "blip-caption": (lambda root: _saved(blip_model("caption", "tiny", seed=2), root),
                     17),
    # DaViT 32 px, one stride-4 stage: 8 x 8 spatial tokens + one temporal token.
    "florence2": (lambda root: write_random(root, sized_config("tiny"), 32,
                                                      seed=3), 65),
}


def _saved(model: torch.nn.Module, root: Path) -> Path:
    model.save_pretrained(root)
    return root


@pytest.fixture(autouse=True)
def torch_threads():
    """Benchmarks pin torch to one thread; the rest of the suite keeps its own count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(FOLDERS))
def family_folder(request, tmp_path_factory) -> tuple[Path, int]:
    write, tokens = FOLDERS[request.param]
    return write(tmp_path_factory.mktemp(request.param) / request.param), tokens


def test_peft_baselines_compares_our_bank_with_peft_on_every_family(family_folder, capsys):
    folder, _ = family_folder
    assert peft_baselines.main(["--backbone", str(folder), "--adapters", "3", "--rows", "5",
                                "--visual-tokens", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    line = re.search(rf"{re.escape(str(folder))}\s+N=\s*3 rows 5: .*", out).group(0)
    for ratio in ("ours/peft_mixed", "ours/swap", "ours/backbone"):
        assert re.search(rf"{ratio} \d+\.\d\d", line), ratio
    assert "16 text + 4 visual tokens" in out


def test_mixed_adapters_sends_one_image_of_the_familys_tokens(family_folder, tmp_path, capsys):
    folder, tokens = family_folder
    assert mixed_adapters.main(["--backbone", str(folder), "--methods", "lora,forms",
                                "--rows", "8", "--adapters", "4", "--repeats", "1",
                                "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"batch 8 rows (12 text + {tokens} visual tokens)" in out
    assert re.search(r"lora +N= +4 .* mixed/backbone \d+\.\d\d", out)
    assert re.search(r"four forms / LoRA only \d+\.\d\d", out)


def test_the_florence2_helper_writes_a_folder_the_benchmarks_load_and_keeps_a_full_one(
        tmp_path, capsys):
    out = tmp_path / "florence2"
    assert florence2_base.main(["--out", str(out), "--size", "tiny"]) == 0
    backbone = load_backbone(out)
    assert isinstance(backbone, florence2.Florence2Backbone) and backbone.tokens_per_image == 65
    written = sorted(path.name for path in out.iterdir())
    capsys.readouterr()  # transformers' progress bars of the first write
    assert florence2_base.main(["--out", str(out), "--size", "tiny"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert sorted(path.name for path in out.iterdir()) == written
