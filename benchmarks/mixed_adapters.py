"""Benchmark 1: a batch mixing N adapters against the same batch on one adapter.

    python -m benchmarks.mixed_adapters [--preset tiny] [--methods lora,adapter]
                                        [--rows 512] [--adapters 1,8,64,512] [--repeats 7]

One batch of `rows` examples (random text ids, visual features and 4 label tokens); the
bank holds N random adapter sets of one method (stacked, as the server's slot table does).
Three forwards of the same batch (encoder + teacher-forced decoder), interleaved:

- mixed:    row i uses slot i % N (N distinct adapters in the batch; gathered kernels),
- uniform:  every row uses slot 0 of the same bank (one dense matmul per site),
- backbone: the frozen backbone, no adapter (the ceiling).

Prints rows/s (median of `repeats`), the ratios mixed / uniform and mixed / backbone,
the machine, and writes `benchmarks/results/mixed_adapters.png` (throughput vs N).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS,
    add_machine_options,
    interleaved,
    machine_line,
    median_ms,
    pin_threads,
    random_adapter,
)
from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import StackedWeights, stack_weights
from modeling.config import preset
from modeling.kernels import RowIndex
from modeling.recipe import MethodEntry

RECIPES = {
    "lora": [MethodEntry("lora", {"rank": 8, "alpha": 16}, "single")],
    "adapter": [MethodEntry("adapter", {"reduction_factor": 8}, "single")],
}


def random_batch(backbone: VLBackbone, rows: int, text: int = 12, labels: int = 4) -> VLBatch:
    """Random ids and features shaped like a one-image request (seeded)."""
    g = torch.Generator().manual_seed(0)
    config = backbone.config
    vocab, tokens = backbone.lm.config.vocab_size, config.image_grid ** 2
    return VLBatch(
        input_ids=torch.randint(3, vocab, (rows, text), generator=g),
        text_mask=torch.ones(rows, text, dtype=torch.bool),
        visual=torch.randn(rows, tokens, config.feat_dim, generator=g),
        visual_mask=torch.ones(rows, tokens, dtype=torch.bool),
        image_order=torch.zeros(rows, tokens, dtype=torch.long),
        labels=torch.randint(3, vocab, (rows, labels), generator=g))


def bank_of(backbone: VLBackbone, method: str, slots: int) -> StackedWeights:
    """`slots` random adapter sets of `method`, stacked."""
    sets = [random_adapter(backbone, RECIPES[method], ["vqa"], seed).materialize("vqa")
            for seed in range(slots)]
    return stack_weights(sets, backbone.frozen_tensors(), backbone.config.d_model,
                         next(backbone.parameters()))


def measure(backbone: VLBackbone, batch: VLBatch, method: str, adapters: int,
            repeats: int) -> dict[str, float]:
    """rows/s of mixed, uniform and bare-backbone forwards of one batch."""
    bank = bank_of(backbone, method, adapters)
    rows = batch.size
    mixed = RowIndex.of(torch.arange(rows) % adapters)
    uniform = RowIndex.of(torch.zeros(rows, dtype=torch.long))
    with torch.no_grad():
        times = interleaved({
            "mixed": lambda: backbone(batch, bank, mixed),
            "uniform": lambda: backbone(batch, bank, uniform),
            "backbone": lambda: backbone(batch),
        }, repeats=repeats, warmup=1)
    return {name: rows / (median_ms(t) / 1000) for name, t in times.items()}


def plot(results: dict[str, dict[int, dict[str, float]]], title: str, path: Path) -> None:
    """Throughput vs number of adapters, one panel per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for axis, (method, by_n) in zip(axes[0], results.items(), strict=True):
        counts = sorted(by_n)
        for name, style in (("mixed", "o-"), ("uniform", "s--"), ("backbone", "k:")):
            axis.plot(counts, [by_n[n][name] for n in counts], style, label=name)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("distinct adapters in the batch (N)")
        axis.set_ylabel("rows / s")
        axis.set_title(f"{method}: {title}")
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--methods", default="lora,adapter")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--adapters", default="1,8,64,512")
    parser.add_argument("--repeats", type=int, default=7)
    add_machine_options(parser)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    print(machine_line())
    backbone = VLBackbone.from_config(preset(args.preset), seed=0).to(args.device)
    batch = random_batch(backbone, args.rows).to(args.device)
    counts = [int(n) for n in args.adapters.split(",")]
    print(f"preset {args.preset}, batch {args.rows} rows, device {args.device}; rows/s = "
          f"median of {args.repeats} interleaved forwards (encoder + decoder, 4 labels)")
    results: dict[str, dict[int, dict[str, float]]] = {}
    for method in args.methods.split(","):
        results[method] = {}
        for n in counts:
            r = measure(backbone, batch, method, n, args.repeats)
            results[method][n] = r
            print(f"{method:8s} N={n:4d}  mixed {r['mixed']:9.0f}  uniform {r['uniform']:9.0f}"
                  f"  backbone {r['backbone']:9.0f} rows/s   mixed/uniform "
                  f"{r['mixed'] / r['uniform']:.2f}  mixed/backbone "
                  f"{r['mixed'] / r['backbone']:.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(results, f"{args.preset}, {args.rows} rows, {args.device}",
         out / f"mixed_adapters_{args.preset}_{args.device}.png")
    stem = f"mixed_adapters_{args.preset}_{args.device}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
