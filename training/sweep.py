"""`train-adapter sweep`: the empirical study's grid, data ratio x trainable-parameter size.

For each method the size knob is the study's (Sec. IV): prompt / prefix length, LoRA rank,
serial / parallel adapter width. Every cell is one training run; the results go to a CSV
and two PNG plots like the study's Figs. 3-5: the headline metric against the data ratio
(one line per method, at its middle size) and against the trainable parameters (one
line per method, at the full data ratio).
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from modeling.config import PRESETS  # noqa: E402
from modeling.params import report  # noqa: E402
from modeling.recipe import MethodEntry  # noqa: E402
from modeling.tasks import TASKS  # noqa: E402
from training.config import RunConfig  # noqa: E402
from training.trainer import Trainer, load_backbone, load_splits  # noqa: E402

SIZE_KNOBS = {"prompt_tuning": "length", "prefix_tuning": "length", "lora": "rank",
              "adapter": "width", "parallel_adapter": "width"}
DEFAULT_SIZES = {"prompt_tuning": [2, 8, 32], "prefix_tuning": [2, 8, 32], "lora": [2, 8, 32],
                 "adapter": [16, 64, 128], "parallel_adapter": [16, 64, 128]}
# The study also trains the visual projection alongside every method.
PROJECTION = MethodEntry("trainable_tensors", {}, "single", "tensors")


def cell_methods(method: str, size: int, projection: bool = True) -> list[MethodEntry]:
    """One cell's recipe; projection: the backbone has a visual projection to train too
    (BLIP feeds the ViT's states straight to its text encoder and decoder: none)."""
    if method not in SIZE_KNOBS:
        raise ValueError(f"sweep method {method!r}; expected one of {sorted(SIZE_KNOBS)}")
    return [MethodEntry(method, {SIZE_KNOBS[method]: size}, "single"),
            *([PROJECTION] if projection else [])]


def run_sweep(base: RunConfig, out_dir: str | Path, methods: list[str], ratios: list[float],
              sizes: dict[str, list[int]] | None = None) -> list[dict]:
    """Train every (method, size, ratio) cell; write results.csv and the plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(base.backbone, load_splits(base))
    if base.backbone in PRESETS:  # built here, with a tokenizer of this data: keep it
        backbone.save_pretrained(out / "backbone")
    has_projection = getattr(backbone, "visual", None) is not None
    rows = []
    for method in methods:
        for size in (sizes or DEFAULT_SIZES)[method]:
            for ratio in ratios:
                entries = cell_methods(method, size, has_projection)
                config = replace(base, methods=entries, data_ratio=ratio)
                cell = out / f"{method}-{SIZE_KNOBS[method]}{size}-ratio{ratio:g}"
                metrics = Trainer(config, cell, backbone=backbone, show_progress=False).run()
                counted = report(backbone.config, entries, sorted(base.tasks))
                headline = {t: m[TASKS[t].metric] for t, m in metrics.items()}
                rows.append({"method": method, "knob": SIZE_KNOBS[method], "size": size,
                             "data_ratio": ratio, "trainable": counted.trainable,
                             "percent": round(counted.percent, 4), **headline,
                             "mean": sum(headline.values()) / max(1, len(headline))})
    write_results(rows, out)
    return rows


def write_results(rows: list[dict], out: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out)


def _save_lines(lines: dict[str, list[tuple[float, float]]], xlabel: str, path: Path) -> None:
    """One PNG: a line per label through its (x, mean metric) points, log x axis."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        axis.plot(*zip(*sorted(points), strict=True), marker="o", label=label)
    axis.set(xlabel=xlabel, ylabel="mean metric (%)", xscale="log")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot(rows: list[dict], out: Path) -> None:
    """metric_vs_data_ratio.png and metric_vs_parameters.png (mean headline metric)."""
    by_ratio, by_size = {}, {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        sizes = sorted({r["size"] for r in mine})
        middle = sizes[len(sizes) // 2]
        by_ratio[f"{method} ({middle})"] = [(r["data_ratio"], r["mean"]) for r in mine
                                            if r["size"] == middle]
        full = max(r["data_ratio"] for r in mine)
        by_size[method] = [(r["trainable"], r["mean"]) for r in mine if r["data_ratio"] == full]
    _save_lines(by_ratio, "training data ratio", out / "metric_vs_data_ratio.png")
    _save_lines(by_size, "trainable parameters", out / "metric_vs_parameters.png")
