"""The README's example data (examples/data): three records per layout, and `data check`
finds everything once `write_images.py` has written the images and frames."""

from __future__ import annotations

import importlib.util
import shutil
from collections import Counter
from pathlib import Path

import pytest

from training.cli import main
from training.config import load_config, read_task_split

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    """A copy of examples/data with its images written by its own script."""
    copy = tmp_path_factory.mktemp("examples") / "data"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("*.jpg", "*.png"))
    spec = importlib.util.spec_from_file_location("write_images", copy / "write_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_images(copy)
    return copy


@pytest.mark.parametrize("config", ["official.yaml", "preprocessed.yaml"])
def test_example_configs_pass_data_check(examples: Path, config: str, capsys) -> None:
    assert main(["data", "check", "--config", str(examples / config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "data check: everything found"
    assert all("detected" not in line for line in out if "configured" in line)


@pytest.mark.parametrize("config", ["official.yaml", "preprocessed.yaml"])
def test_every_example_file_holds_three_records(examples: Path, config: str) -> None:
    records: Counter[str] = Counter()
    for task, data in load_config(examples / config).tasks.items():
        for split in ("train", "val", "test"):
            if getattr(data, split) is not None:
                read = read_task_split(task, data, split, one_per_caption=False)
                records[getattr(data, split)] += len(read.examples)
    assert set(records.values()) == {3}, records
