"""train-adapter sweep: one run per (method, size, ratio) cell, a CSV and two plots."""

from __future__ import annotations

import csv

import yaml

from training.cli import main


def test_sweep_writes_a_row_per_cell_and_the_plots(world, tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({**world["raw"], "steps": 1,
                                      "tasks": {"nlvr2": world["raw"]["tasks"]["nlvr2"]}}))
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "sweep"),
                 "--methods", "lora,prompt_tuning", "--ratios", "0.5,1", "--sizes", "2,4"]) == 0
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2
    lora = sorted(int(r["trainable"]) for r in rows if r["method"] == "lora")
    assert lora[0] < lora[-1]  # rank 4 trains more than rank 2
    assert {r["data_ratio"] for r in rows} == {"0.5", "1.0"}
    for name in ("metric_vs_data_ratio.png", "metric_vs_parameters.png"):
        assert (tmp_path / "sweep" / name).read_bytes()[:4] == b"\x89PNG"


def test_sweep_refuses_a_method_without_a_size_knob(world, tmp_path, capsys):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(world["raw"]))
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "s"),
                 "--methods", "hyperformer", "--sizes", "2"]) == 2
    assert "sweep method 'hyperformer'" in capsys.readouterr().err
