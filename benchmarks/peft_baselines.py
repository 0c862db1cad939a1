"""Benchmark 2: our mixed batch against what users run today, same model, same requests.

    python -m benchmarks.peft_baselines [--presets small,tiny-bart | --backbone FOLDER]
                                        [--adapters 8,64]
                                        [--rows 64] [--rank 8] [--repeats 5]
                                        [--baseline GIT_REF] [--clock wall|cpu]

On the plain Hugging Face T5 / BART LM of a backbone preset, or of a backbone folder of any
family (`--backbone`, through `modeling.families.load_backbone`; text only), N LoRA adapters
(rank r on q and v of every attention, random A and B) serve one batch of `rows` requests,
row i on a seeded random adapter. Four ways to compute the batch's logits, interleaved:

- ours:        the stacked bank, one forward (`backbone.adapter_context.use(bank, index, rows=)`
               around the hooked LM; LoRA deltas gathered per row),
- peft_mixed:  HF PEFT's own mixed batch, `peft_model(..., adapter_names=[...])`,
- swap:        swap per batch: group rows by adapter, `peft_model.set_adapter(name)` and
               run each sub-batch (what a PEFT user does without mixed batches),
- backbone:    the LM with no adapter (the ceiling).

Before timing, the three adapter paths must give the same logits (max |diff| / max |logit|
<= 1e-5, printed).
Prints rows/s, the ratios ours / peft_mixed, ours / swap and ours / backbone, and the
machine. With `--baseline GIT_REF` each preset is first run by this script as of GIT_REF
(a subprocess, same options), then by this code, and ours / backbone is printed before
and after. `--clock cpu` times each call by the CPU time of the thread running torch,
in both processes: steadier than the wall clock on a machine other jobs share.
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
    add_machine_options,
    check_clock,
    interleaved,
    machine_line,
    median_ms,
    pin_threads,
    print_before_after,
    ratios_in,
    run_at_ref,
)
from modeling.backbone import VLBackbone
from modeling.bank import build_bank
from modeling.families import load_backbone
from modeling.kernels import RowIndex
from modeling.peft_format import plain_lm
from modeling.serve_forms import AdapterSet, LowRankDelta

LEAVES = {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"]}
# A result line: "<preset> N=<count> rows ...: ... ours/backbone <ratio> | ..."
RESULT_LINE = r"(?P<preset>\S+)\s+N=\s*(?P<n>\d+) rows.* ours/backbone (?P<ratio>[\d.]+)"


def peft_with_adapters(backbone: VLBackbone, count: int, rank: int, alpha: float
                       ) -> tuple[nn.Module, list[AdapterSet]]:
    """A PeftModel with adapters a0..a{count-1} (random A, B) and our serve form of each."""
    leaves = LEAVES[backbone.config.lm_type]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=leaves,
                        task_type="SEQ_2_SEQ_LM")
    model = get_peft_model(plain_lm(backbone), config, adapter_name="a0")
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
                serve[i].lora[f"lm.{path}"] = LowRankDelta(a.clone(), b.clone(), alpha / rank)
    return model.eval(), serve


def swap_per_batch(model: nn.Module, inputs: dict, names: list[str]) -> torch.Tensor:
    """Group rows by adapter, set_adapter, run each sub-batch, reassemble the logits."""
    out = None
    for name in sorted(set(names)):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name])
        model.set_adapter(name)
        logits = model(**{k: v[rows] for k, v in inputs.items()}).logits
        if out is None:
            out = logits.new_empty(len(names), *logits.shape[1:])
        out[rows] = logits
    return out


def compare(name: str, count: int, rows: int, rank: int, repeats: int,
            clock: str = "wall") -> float:
    """Check equal logits, then time the four paths for one preset and adapter count;
    prints the result line and returns ours / backbone."""
    backbone = load_backbone(name)
    model, serve = peft_with_adapters(backbone, count, rank, alpha=2.0 * rank)
    bare = plain_lm(backbone)
    rng, g = random.Random(1), torch.Generator().manual_seed(1)
    vocab = backbone.lm.config.vocab_size
    inputs = {"input_ids": torch.randint(3, vocab, (rows, 16), generator=g),
              "attention_mask": torch.ones(rows, 16, dtype=torch.long),
              "decoder_input_ids": torch.randint(3, vocab, (rows, 4), generator=g)}
    slots = [rng.randrange(count) for _ in range(rows)]
    names = [f"a{s}" for s in slots]
    bank = build_bank(serve, backbone.frozen_tensors(), backbone.config.d_model,
                         next(backbone.parameters()))
    index = RowIndex.of(torch.tensor(slots))

    def ours() -> torch.Tensor:
        with backbone.adapter_context.use(bank, index, rows=rows):
            return backbone.lm(**inputs).logits

    paths = {"ours": ours,
             "peft_mixed": lambda: model(**inputs, adapter_names=names).logits,
             "swap": lambda: swap_per_batch(model, inputs, names),
             "backbone": lambda: bare(**inputs).logits}
    with torch.no_grad():
        reference = ours()
        scale = reference.abs().max().item()
        diffs = {k: (paths[k]() - reference).abs().max().item() / scale
                 for k in ("peft_mixed", "swap")}
        times = interleaved(paths, repeats=repeats, warmup=1, clock=clock)
    if max(diffs.values()) > 1e-5:
        raise AssertionError(f"logits differ from ours: {diffs}")
    speed = {k: rows / (median_ms(t) / 1000) for k, t in times.items()}
    print(f"{name:9s} N={count:3d} rows {rows}: " +
          "  ".join(f"{k} {v:7.0f}" for k, v in speed.items()) +
          f" rows/s | ours/peft_mixed {speed['ours'] / speed['peft_mixed']:.2f}  ours/swap "
          f"{speed['ours'] / speed['swap']:.2f}  ours/backbone "
          f"{speed['ours'] / speed['backbone']:.2f} | max |diff| / max |logit|: peft_mixed "
          f"{diffs['peft_mixed']:.1e} swap {diffs['swap']:.1e}", flush=True)
    return speed["ours"] / speed["backbone"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,tiny-bart")
    parser.add_argument("--backbone", help="a backbone folder (any family) instead of --presets")
    parser.add_argument("--adapters", default="8,64")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    add_machine_options(parser, device=False)
    add_baseline_option(parser)
    add_clock_option(parser)
    args = parser.parse_args(argv)
    check_clock(parser, args)
    pin_threads(args.threads)
    print(machine_line())
    print(f"LoRA rank {args.rank} on q, v; rows/s = median of {args.repeats} interleaved "
          f"forwards (16 source tokens, 4 decoder tokens, teacher-forced logits), {args.clock} "
          "clock")
    before: dict[tuple[str, ...], float] = {}
    after: dict[tuple[str, ...], float] = {}
    for name in [args.backbone] if args.backbone else args.presets.split(","):
        if args.baseline:
            output = run_at_ref(args.baseline, "peft_baselines", [
                "--presets", name, "--adapters", args.adapters, "--rows", str(args.rows),
                "--rank", str(args.rank), "--repeats", str(args.repeats),
                "--threads", str(args.threads)], args.clock)
            before.update(ratios_in(output, RESULT_LINE))
            print("".join(f"  before | {line}\n" for line in output.splitlines()
                          if re.match(RESULT_LINE, line)), end="", flush=True)
        for count in (int(n) for n in args.adapters.split(",")):
            after[(name, str(count))] = compare(name, count, args.rows, args.rank, args.repeats,
                                                args.clock)
    if args.baseline:
        print_before_after("ours / backbone", before, after, args.baseline)
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
