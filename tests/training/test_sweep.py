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


def test_plots_draw_each_method_at_its_middle_size_and_at_the_full_data_ratio(tmp_path,
                                                                              monkeypatch):
    """The study's Figs. 3-5: metric vs data ratio at a method's middle size, metric vs
    trainable parameters at the full data ratio."""
    import training.sweep as sweep

    drawn = {}
    monkeypatch.setattr(sweep, "_save_lines",
                        lambda lines, xlabel, path: drawn.setdefault(path.name, lines))
    rows = [{"method": "lora", "size": size, "data_ratio": ratio, "trainable": 10 * size,
             "mean": size + ratio} for size in (2, 4, 8) for ratio in (0.5, 1.0)]
    sweep.plot(rows, tmp_path)
    assert drawn["metric_vs_data_ratio.png"] == {"lora (4)": [(0.5, 4.5), (1.0, 5.0)]}
    assert drawn["metric_vs_parameters.png"] == {"lora": [(20, 3.0), (40, 5.0), (80, 9.0)]}
