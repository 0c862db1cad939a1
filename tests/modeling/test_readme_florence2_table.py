"""The README's Florence-2-base parameter table is what the parameter report counts."""

from __future__ import annotations

from pathlib import Path

from benchmarks.florence2_sizes import sized_config
from modeling.families import florence2
from modeling.params import report
from modeling.presets import method_preset

IMAGE_TEXT = ["vqa", "gqa", "nlvr2", "caption"]


def test_readme_table_is_the_parameter_report_of_florence2_base():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("Parameter report for Florence-2-base"):]
    rows = [line.split("|")[1:-1] for line in section.splitlines()[:20]
            if line.strip().startswith("| ") and "%" in line]
    assert len(rows) == 7
    config = florence2.from_config(sized_config("base"), device="meta",
                                   image_size=768).config
    for preset, trainable, total, percent in rows:
        counted = report(config, method_preset(preset.strip()), IMAGE_TEXT)
        assert (f"{counted.trainable:,}", f"{counted.total:,}", f"{counted.percent:.2f}%") == \
            (trainable.strip(), total.strip(), percent.strip()), preset
