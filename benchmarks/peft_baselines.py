"""Benchmark 2: our mixed batch against what users run today, same model, same requests.

    python -m benchmarks.peft_baselines [--presets small,tiny-bart | --backbone FOLDER]
                                        [--adapters 8,64] [--rows 64] [--rank 8]
                                        [--visual-tokens 16] [--repeats 5]
                                        [--baseline GIT_REF] [--clock wall|cpu]
                                        [--device cuda] [--dtype float32|bfloat16|float16]

On a backbone preset, or a backbone folder of any family (`--backbone`, through
`modeling.families.load_backbone`: VL-T5 / VL-BART, Florence-2, BLIP), N LoRA adapters
(rank r on q and v of every attention of the LM, `lora_sites`; random A and B) serve one
batch of `rows` requests, row i on a seeded random adapter. Each request: 16 text tokens,
`--visual-tokens` random visual feature vectors (what the vision cache hands the
backbone; fewer than a real image's, e.g. Florence-2-base's 577, to keep CPU runs short)
and 4 teacher-forced label tokens. Six ways to compute the batch's logits, all through
the backbone's own `forward(batch, bank, index)` (encoder inputs, encoder, decoder: the
interface every family implements), interleaved:

- ours:        the stacked bank, one forward (`backbone(batch, bank, index)`; LoRA deltas
               gathered per row),
- peft_mixed:  HF PEFT's own mixed batch: a copy of the backbone wrapped by
               `get_peft_model`, `peft_model(batch, adapter_names=[...])`,
- swap:        swap per batch: group rows by adapter, `peft_model.set_adapter(name)` and
               run each sub-batch (what a PEFT user does without mixed batches),
- backbone:    a third module over the same weights, no adapter (the ceiling),
- peft_one:    PEFT with one adapter on every row (`set_adapter("a0")`, unmerged): what a
               PEFT user pays for a single adapter,
- uniform:     our bank with every row on slot 0: the LoRA arithmetic alone (one dense
               matmul per product, nothing gathered); uniform / backbone is the most a
               mixed batch can reach on this model with unmerged LoRA.

Before timing, the three adapter paths must give the same logits (max |diff| / max |logit|
<= 1e-5 in float32, `AGREEMENT` in 16-bit types; printed) and differ from the bare
backbone's by more than twice that (the adapters act).
Prints rows/s, the ratios ours / peft_mixed, ours / swap, ours / peft_one, ours /
backbone and uniform / backbone (the median of the per-round ratios, their quartiles in
parentheses: this machine's noise), and the machine. With `--baseline GIT_REF` each
preset is first run by this script as of GIT_REF (a subprocess, same options), then by
this code, and ours / backbone is printed before and after (code older than
`--visual-tokens` times text-only requests). `--clock cpu` times each call by the CPU time
of the thread running torch, in both processes: steadier than the wall clock on a machine
other jobs share.
"""

from __future__ import annotations

import argparse
import random
import re

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from benchmarks.common import (
    add_baseline_option,
    add_clock_option,
    add_dtype_option,
    add_machine_options,
    check_clock,
    interleaved,
    machine_line,
    median_ms,
    paired_ratio,
    pin_threads,
    placed,
    print_before_after,
    random_batch,
    ratios_in,
    run_at_ref,
    sharing_weights,
)
from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import build_bank
from modeling.cli_parser import positive_int
from modeling.families import load_backbone
from modeling.kernels import RowIndex
from modeling.methods.base import BackboneFacts
from modeling.methods.lora import lora_sites
from modeling.serve_forms import AdapterSet, LowRankDelta

# A result line: "<preset> N=<count> rows ...: ... ours/backbone <ratio> | ..."
RESULT_LINE = r"(?P<preset>\S+)\s+N=\s*(?P<n>\d+) rows.* ours/backbone (?P<ratio>[\d.]+)"
TEXT_TOKENS, LABEL_TOKENS = 16, 4
# How close PEFT's logits must come to ours (max |diff| / max |logit|): float32 sums in
# another order; in 16-bit types PEFT keeps its LoRA weights in float32
# (`autocast_adapter_dtype`) where the bank holds them in the backbone's type.
AGREEMENT = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 1e-2}


def peft_with_adapters(plain: VLBackbone, count: int, rank: int, alpha: float
                       ) -> tuple[nn.Module, list[AdapterSet]]:
    """PEFT's LoRA adapters a0..a{count-1} (random A, B) injected into `plain` (a backbone
    copy no bank has touched), and our serve form of each.

    The targets are our LoRA sites for q and v (`lora_sites`: every attention of any
    family's LM), so PEFT and the bank adapt the same Linears; PEFT wraps the backbone
    itself, so its paths run the same `forward` as ours.
    """
    sites = lora_sites(BackboneFacts.of(plain), ("q", "v"))
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sites)
    model = get_peft_model(plain, config, adapter_name="a0")
    for i in range(1, count):
        model.add_adapter(f"a{i}", config)
    g = torch.Generator().manual_seed(0)
    serve = [AdapterSet() for _ in range(count)]
    with torch.no_grad():
        for path, module in model.base_model.model.named_modules():
            if not hasattr(module, "lora_A") or "a0" not in module.lora_A:
                continue
            for i in range(count):
                a, b = module.lora_A[f"a{i}"].weight, module.lora_B[f"a{i}"].weight
                a.copy_(torch.randn(a.shape, generator=g) * 0.1)
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
                serve[i].lora[path] = LowRankDelta(a.clone(), b.clone(), alpha / rank)
    return model.eval(), serve


def one_adapter(model: nn.Module, batch: VLBatch) -> torch.Tensor:
    """Every row on adapter a0: PEFT's own single-adapter forward."""
    model.set_adapter("a0")
    return model(batch)


def swap_per_batch(model: nn.Module, batch: VLBatch, names: list[str]) -> torch.Tensor:
    """Group rows by adapter, set_adapter, run each sub-batch, reassemble the logits."""
    out = None
    for name in sorted(set(names)):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name],
                            device=batch.input_ids.device)
        model.set_adapter(name)
        logits = model(batch.select(rows))
        if out is None:
            out = logits.new_empty(len(names), *logits.shape[1:])
        out[rows] = logits
    return out


def compare(name: str, count: int, rows: int, rank: int, repeats: int,
            clock: str = "wall", visual_tokens: int = 16, device: str = "cpu",
            dtype: str = "float32") -> float:
    """Check equal logits, then time the paths for one backbone and adapter count;
    prints the result line and returns ours / backbone.

    Three modules over one copy of the frozen weights (`sharing_weights`): ours (hooks
    read the bank), one PEFT wraps, and the bare one, which no bank or PEFT layer ever
    touches; where a copy's weights landed in memory cannot favour one of them.
    """
    backbone = load_backbone(name)
    backbone, batch = placed(backbone, random_batch(backbone, rows, TEXT_TOKENS, LABEL_TOKENS,
                                                    visual_tokens, seed=1), device, dtype)
    bare = sharing_weights(load_backbone(name), backbone)
    model, serve = peft_with_adapters(sharing_weights(load_backbone(name), backbone), count,
                                      rank, alpha=2.0 * rank)
    rng = random.Random(1)
    slots = [rng.randrange(count) for _ in range(rows)]
    names = [f"a{s}" for s in slots]
    bank = build_bank(serve, backbone.frozen_tensors(), backbone.config.d_model,
                      next(backbone.parameters()))
    index, uniform = RowIndex.of(slots, device), RowIndex.of([0] * rows, device)
    paths = {"ours": lambda: backbone(batch, bank, index),
             "peft_mixed": lambda: model(batch, adapter_names=names),
             "swap": lambda: swap_per_batch(model, batch, names),
             "backbone": lambda: bare(batch),
             "peft_one": lambda: one_adapter(model, batch),
             "uniform": lambda: backbone(batch, bank, uniform)}
    with torch.no_grad():
        reference = paths["ours"]()
        scale = reference.abs().max().item()
        diffs = {k: (paths[k]() - reference).abs().max().item() / scale
                 for k in ("peft_mixed", "swap", "backbone")}
        times = interleaved(paths, repeats=repeats, warmup=1, clock=clock)
    disagreement = max(diffs["peft_mixed"], diffs["swap"])
    if disagreement > AGREEMENT[dtype]:
        raise AssertionError(f"logits differ from ours: {diffs}")
    # else agreeing logits would not show the adapters applied the same way
    if diffs["backbone"] < max(1e-3, 2 * disagreement):
        raise AssertionError(f"the adapters move the logits less than the paths disagree: "
                             f"{diffs}")
    speed = {k: rows / (median_ms(t) / 1000) for k, t in times.items()}
    ratios = {f"{top}/{bottom}": paired_ratio(times, top, bottom) for top, bottom in (
        ("ours", "peft_mixed"), ("ours", "swap"), ("ours", "peft_one"), ("ours", "backbone"),
        ("uniform", "backbone"))}
    print(f"{name:9s} N={count:3d} rows {rows}: " +
          "  ".join(f"{k} {v:7.0f}" for k, v in speed.items()) + " rows/s | " +
          "  ".join(f"{pair} {ratio}" for pair, ratio in ratios.items()) +
          f" | max |diff| / max |logit|: peft_mixed {diffs['peft_mixed']:.1e} swap "
          f"{diffs['swap']:.1e} (backbone {diffs['backbone']:.1e})", flush=True)
    return ratios["ours/backbone"].median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,tiny-bart")
    parser.add_argument("--backbone", help="a backbone folder (any family) instead of --presets")
    parser.add_argument("--adapters", default="8,64")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--visual-tokens", type=positive_int, default=16,
                        help="random visual feature vectors per request (default 16)")
    parser.add_argument("--repeats", type=int, default=5)
    add_machine_options(parser)
    add_dtype_option(parser)
    add_baseline_option(parser)
    add_clock_option(parser)
    args = parser.parse_args(argv)
    check_clock(parser, args)
    pin_threads(args.threads)
    print(machine_line())
    print(f"LoRA rank {args.rank} on q, v; rows/s = median of {args.repeats} interleaved "
          f"forwards ({TEXT_TOKENS} text + {args.visual_tokens} visual tokens, {LABEL_TOKENS} "
          f"decoder tokens, teacher-forced logits), device {args.device}, {args.dtype}, "
          f"{args.clock} clock")
    before: dict[tuple[str, ...], float] = {}
    after: dict[tuple[str, ...], float] = {}
    for name in [args.backbone] if args.backbone else args.presets.split(","):
        if args.baseline:
            output = run_at_ref(args.baseline, "peft_baselines", [
                "--presets", name, "--adapters", args.adapters, "--rows", str(args.rows),
                "--rank", str(args.rank), "--repeats", str(args.repeats),
                "--threads", str(args.threads), "--device", args.device, "--dtype",
                args.dtype], args.clock)
            before.update(ratios_in(output, RESULT_LINE))
            print("".join(f"  before | {line}\n" for line in output.splitlines()
                          if re.match(RESULT_LINE, line)), end="", flush=True)
        for count in (int(n) for n in args.adapters.split(",")):
            after[(name, str(count))] = compare(name, count, args.rows, args.rank, args.repeats,
                                                args.clock, args.visual_tokens, args.device,
                                                args.dtype)
    if args.baseline:
        print_before_after("ours / backbone", before, after, args.baseline)
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
