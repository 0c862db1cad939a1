"""Benchmark 13: one adapter's LoRA merged into the frozen weight for the call, against the
frozen product plus LoRA's two rank-wide products.

    python -m benchmarks.merged_lora [--widths 64,128,768] [--tokens 16,64,256,1024,4096]
                                     [--runs 1,8] [--rank 8] [--repeats 200]
                                     [--clock wall|cpu] [--threads 1] [--device cpu|cuda]

Rows on one adapter, or in runs sharing an adapter (the engine admits them so), can fold
each run's delta into the frozen weight (`modeling.kernels.merged_lora`: W + B A, then one
product per run) instead of adding (x A^T) B^T to the frozen output: the two rank-wide
products are narrow matmuls that run at a fraction of a dense one's rate, and merging
costs in x out x rank per run whatever its tokens. Which is faster depends on the width
and the tokens per run; the hooks merge where `kernels.merge_pays` says (tokens x (in +
out) >= MERGE_RATIO x runs x in x out). For a square Linear of each width, each token
count per run and each number of runs (1: a uniform index; more: runs of two rows, each
run its own adapter) this times, interleaved: the bare Linear, the two products as the
hooks run them (the Linear's output, then `gathered_lora` added into it) and the merged
product; and prints merged / two products (> 1: merging is faster), each against the bare
Linear, and which of the two the rule picks.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.common import (
    add_clock_option,
    add_machine_options,
    as_process,
    check_clock,
    interleaved,
    machine_line,
    median_ms,
    paired_ratio,
    pin_threads,
)
from modeling.cli_parser import positive_int
from modeling.kernels import RowIndex, gathered_lora, merge_pays, merged_lora


def _sizes(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",")]


def compare(width: int, tokens: int, runs: int, rank: int, repeats: int, clock: str,
            device: str) -> bool:
    """Time the three paths for one width, token count per run and number of runs; print
    the line and return whether the rule picked the faster of merged and two products."""
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(width, width).to(device)
    rows = 1 if runs == 1 else 2 * runs  # a run of two rows: what the rule takes as a run
    x = torch.randn(rows, max(1, tokens * runs // rows), width, generator=gen).to(device)
    # the bank's layout: [slots, rank, in] and [slots, out, rank] views of transposed memory
    lora_a = (0.1 * torch.randn(runs, width, rank, generator=gen)).to(device).transpose(1, 2)
    lora_b = (0.1 * torch.randn(runs, rank, width, generator=gen)).to(device).transpose(1, 2)
    index = RowIndex.of([row * runs // rows for row in range(rows)], device=device)
    paths = {
        "bare": lambda: linear(x),
        "two_products": lambda: gathered_lora(x, lora_a, lora_b, None, index,
                                              base=linear(x), into_base=True),
        "merged": lambda: merged_lora(x, linear.weight, linear.bias, lora_a, lora_b, index),
    }
    with torch.no_grad():
        torch.testing.assert_close(paths["merged"](), paths["two_products"](),
                                   rtol=1e-4, atol=1e-4)
        times = interleaved(paths, repeats=repeats, warmup=5, clock=clock)
        merges = merge_pays(x, lora_a, lora_b, index)
    ratio = paired_ratio(times, "merged", "two_products")
    faster = "merged" if ratio.median > 1 else "two products"
    print(f"d {width:4d} tokens/run {tokens:5d} runs {runs:2d}: " +
          "  ".join(f"{name} {1000 * median_ms(t):7.1f} us" for name, t in times.items()) +
          f" | merged/two_products {ratio}  two_products/bare "
          f"{paired_ratio(times, 'two_products', 'bare').median:.2f}  merged/bare "
          f"{paired_ratio(times, 'merged', 'bare').median:.2f} | rule: "
          f"{'merged' if merges else 'two products'} (faster: {faster})", flush=True)
    # a pick within 5% of the other path is as good as this machine can tell
    return merges == (ratio.median > 1) or abs(ratio.median - 1) < 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=_sizes, default=[64, 128, 768])
    parser.add_argument("--tokens", type=_sizes, default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--runs", type=_sizes, default=[1, 8],
                        help="adapters per batch, each a run of two rows (1: one adapter)")
    parser.add_argument("--rank", type=positive_int, default=8)
    parser.add_argument("--repeats", type=positive_int, default=200)
    add_machine_options(parser)
    add_clock_option(parser)
    args = parser.parse_args(argv)
    check_clock(parser, args)
    pin_threads(args.threads)
    print(machine_line())
    print(f"one Linear [d, d] + LoRA rank {args.rank}, float32, device "
          f"{args.device}, {args.clock} clock; median of {args.repeats} interleaved calls")
    picks = [compare(width, tokens, runs, args.rank, args.repeats, args.clock, args.device)
             for runs in args.runs for width in args.widths for tokens in args.tokens]
    print(f"the rule picks the faster path (or one within 5%) in {sum(picks)} of "
          f"{len(picks)} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(as_process(main))
