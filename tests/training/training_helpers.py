"""What the trainer tests share besides fixtures. A module of its own, not conftest: tests/
modeling and tests/serving have a conftest too, and `from conftest import ...` would pick
whichever was imported last when their files run in one pytest command."""

from __future__ import annotations

from pathlib import Path

from modeling import families

TASKS = ("vqa", "nlvr2", "caption", "tvqa")
# Files a model's weights can be saved as; a backbone folder of ours holds safetensors only.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_tuned_backbone_written(out: Path, tuned, original) -> None:
    """A full fine-tuning run's OUT/backbone: a backbone folder (safetensors weights only)
    that loads as `--backbone` into exactly the tuned model, not the one it started from;
    no adapter artifact beside it."""
    folder = out / "backbone"
    weights = {p.suffix for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES}
    assert weights == {".safetensors"}
    loaded = families.load_backbone(folder)
    assert type(loaded) is type(tuned)
    assert loaded.fingerprint() == tuned.fingerprint() != original.fingerprint()
    assert not (out / "artifact").exists()
