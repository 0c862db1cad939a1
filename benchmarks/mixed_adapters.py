"""Benchmark 1: a batch mixing N adapters against the same batch on one adapter.

    python -m benchmarks.mixed_adapters [--preset tiny | --backbone FOLDER]
                                        [--methods lora,adapter,forms]
                                        [--rows 512] [--adapters 1,8,64,512] [--repeats 7]
                                        [--decode TOKENS] [--baseline GIT_REF]
                                        [--clock wall|cpu] [--device cuda]
                                        [--dtype float32|bfloat16|float16]

One batch of `rows` examples (12 random text ids, one image's visual features as the
family encodes it, `tokens_per_image` of them, and 4 label tokens); the bank holds N
random adapter sets of one method (stacked, as the server's slot table does).
Three forwards of the same batch (encoder + teacher-forced decoder), interleaved:

- mixed:    row i uses slot i % N (N distinct adapters in the batch; gathered kernels),
- uniform:  every row uses slot 0 of the same bank (one dense matmul per site),
- backbone: the frozen backbone, no adapter (the ceiling);
- admitted (lora, adapter): the mixed rows in the order the engine admits such requests
  (`in_admission_order`: each adapter's rows one run; ordered before timing, as the
  engine orders them for free at admission), where long runs run LoRA merged per run.

`forms` (N >= 4) mixes all four serve forms: slot j holds the j % 4-th recipe of
`MIXED_RECIPES` (bottleneck adapter + LayerNorms and visual projection, LoRA, prompt,
prefix), row i uses slot i % N. Its baseline is a LoRA-only bank of N sets over the same
rows with the same lengths: the rows that carry prompt vectors in the mixed batch carry as
many more text tokens there, so both encoders see the same padded length.

`--decode TOKENS` also times the engine's cached greedy decode (`modeling.decode_rows`)
of TOKENS tokens per row from each variant's encoder output, rows in the order the engine
admits them (`RowIndex.grouping`), for lora and adapter: tokens/s of mixed, uniform and
backbone. A decode step feeds one position per row, so each row's adapter weights weigh
more there than in the teacher-forced pass.

Prints rows/s (median of `repeats`), the ratios mixed / uniform, mixed / backbone and
admitted / uniform (forms: four forms / LoRA only; the median of the per-round ratios,
and their quartiles in parentheses: this machine's noise), the machine, and writes
`benchmarks/results/mixed_adapters_<preset or folder name>_<device>.png` (throughput vs N)
and `.json`. `--backbone FOLDER` runs on a backbone folder of any family
(`modeling.families.load_backbone`).
With `--baseline GIT_REF` the rows are first measured by this script as of GIT_REF (a
subprocess, same options) and the ratios are printed before and after.
`--clock cpu` times each call by the CPU time of the thread running torch, in both
processes: steadier than the wall clock on a machine other jobs share.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from benchmarks.common import (
    MIXED_RECIPES,
    RESULTS,
    Ratio,
    add_baseline_option,
    add_clock_option,
    add_dtype_option,
    add_machine_options,
    cached_greedy,
    check_clock,
    interleaved,
    machine_line,
    median_ms,
    paired_ratio,
    pin_threads,
    placed,
    print_before_after,
    random_adapter,
    random_batch,
    ratios_in,
    run_at_ref,
)
from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import AdapterBank, build_bank
from modeling.families import load_backbone
from modeling.kernels import RowIndex
from modeling.recipe import MethodEntry

RECIPES = {
    "lora": [MethodEntry("lora", {"rank": 8, "alpha": 16}, "single")],
    "adapter": [MethodEntry("adapter", {"reduction_factor": 8}, "single")],
}
FORMS = "forms"
# A lora / adapter result line: "<method> N=<n>  mixed ...  mixed/uniform <r>  mixed/backbone <r>"
LINE = r"(?P<method>lora|adapter)\s+N=\s*(?P<n>\d+)\s+mixed .*"
UNIFORM_LINE = LINE + r"mixed/uniform (?P<ratio>[\d.]+)"
BACKBONE_LINE = LINE + r"mixed/backbone (?P<ratio>[\d.]+)"
# A decode result line: "<method> N=<n>  decode <t> tokens/row  mixed ...  mixed/uniform <r>"
DECODE_LINE = r"(?P<method>lora|adapter)\s+N=\s*(?P<n>\d+)\s+decode .*mixed/uniform " \
    r"(?P<ratio>[\d.]+)"
# A forms result line: "forms N=<n>  four forms ...  four forms / LoRA only <r>"
FORMS_LINE = r"(?P<method>forms)\s+N=\s*(?P<n>\d+)\s+four forms .*LoRA only (?P<ratio>[\d.]+)"


def bank_of(backbone: VLBackbone, method: str, slots: int) -> AdapterBank:
    """`slots` random adapter sets of `method` (or of every serve form, slot j the j % 4-th
    of `MIXED_RECIPES`, for `forms`), stacked."""
    recipes = [MIXED_RECIPES[j % len(MIXED_RECIPES)] if method == FORMS else RECIPES[method]
               for j in range(slots)]
    sets = [random_adapter(backbone, recipe, ["vqa"], seed).materialize("vqa")
            for seed, recipe in enumerate(recipes)]
    return build_bank(sets, backbone.frozen_tensors(), backbone.config.d_model,
                         next(backbone.parameters()))


def measure(backbone: VLBackbone, batch: VLBatch, method: str, adapters: int,
            repeats: int, clock: str = "wall") -> dict[str, float]:
    """rows/s of mixed, uniform, bare-backbone and admitted-order forwards of one batch."""
    bank = bank_of(backbone, method, adapters)
    rows = batch.size
    device = batch.input_ids.device
    mixed = RowIndex.of([i % adapters for i in range(rows)], device=device)
    uniform = RowIndex.of([0] * rows, device=device)
    admitted_batch, admitted = in_admission_order(batch, mixed, bank)
    with torch.no_grad():
        times = interleaved({
            "mixed": lambda: backbone(batch, bank, mixed),
            "uniform": lambda: backbone(batch, bank, uniform),
            "backbone": lambda: backbone(batch),
            "admitted": lambda: backbone(admitted_batch, bank, admitted),
        }, repeats=repeats, warmup=1, clock=clock)
    return summary(times, rows, ("mixed", "uniform"), ("mixed", "backbone"),
                   ("admitted", "uniform"))


def measure_decode(backbone: VLBackbone, batch: VLBatch, method: str, adapters: int,
                   tokens: int, repeats: int, clock: str = "wall") -> dict[str, float]:
    """tokens/s of the engine's cached greedy decode of `tokens` tokens per row: mixed (rows
    in the engine's admission order), uniform and bare backbone; encoder pass untimed."""
    bank = bank_of(backbone, method, adapters)
    device = batch.input_ids.device
    batch, mixed = in_admission_order(
        batch, RowIndex.of([i % adapters for i in range(batch.size)], device=device), bank)
    variants = {"mixed": (bank, mixed), "uniform": (bank, RowIndex.of([0] * batch.size,
                                                                      device=device)),
                "backbone": (None, None)}
    with torch.no_grad():
        encoded = {name: backbone.encode(batch, *variant) for name, variant in variants.items()}
    times = interleaved({
        name: (lambda name=name: cached_greedy(backbone, *encoded[name], *variants[name],
                                               tokens))
        for name in variants}, repeats=repeats, warmup=1, clock=clock)
    return summary(times, batch.size * tokens, ("mixed", "uniform"), ("mixed", "backbone"))


def in_admission_order(batch: VLBatch, index: RowIndex, bank: AdapterBank
                       ) -> tuple[VLBatch, RowIndex]:
    """`batch` and its `index` with the rows in the order the engine admits such requests
    (`RowIndex.grouping`: each form's rows, then each slot's, consecutive)."""
    order = index.grouping(bank.used_by_sets())
    if order is None:
        return batch, index
    return batch.select(torch.tensor(order, device=batch.input_ids.device)), \
        index.select(order)


def with_prompt_lengths(batch: VLBatch, bank: AdapterBank, index: RowIndex) -> VLBatch:
    """`batch` where each row carries as many more real text tokens as prompt vectors its
    slot of `bank` prepends: the same padded encoder length without prompt tuning."""
    extra = bank.prompt_length.index_select(0, index.slots).to(batch.input_ids.device)
    width = int(extra.max())
    filler = batch.input_ids[:, :1].expand(-1, width)  # real tokens of each row, repeated
    more = torch.arange(width, device=extra.device)[None, :] < extra[:, None]
    longer = VLBatch(**batch.__dict__)
    longer.input_ids = torch.cat([batch.input_ids, filler], 1)
    longer.text_mask = torch.cat([batch.text_mask, more], 1)
    return longer


def measure_forms(backbone: VLBackbone, batch: VLBatch, adapters: int,
                  repeats: int, clock: str = "wall") -> dict[str, float]:
    """rows/s of a batch mixing all four serve forms and of a LoRA-only mixed batch."""
    forms, lora = bank_of(backbone, FORMS, adapters), bank_of(backbone, "lora", adapters)
    index = RowIndex.of([i % adapters for i in range(batch.size)],
                        device=batch.input_ids.device)
    same_lengths = with_prompt_lengths(batch, forms, index)
    with torch.no_grad():
        times = interleaved({
            "four_forms": lambda: backbone(batch, forms, index),
            "lora_only": lambda: backbone(same_lengths, lora, index),
        }, repeats=repeats, warmup=1, clock=clock)
    return summary(times, batch.size, ("four_forms", "lora_only"))


def summary(times: dict[str, list[float]], work: int, *pairs: tuple[str, str]
            ) -> dict[str, float | Ratio]:
    """Each candidate's `work` per second (median call) and, per pair (a, b), "a/b": the
    per-round ratio of their speeds with its quartiles (`paired_ratio`)."""
    speeds: dict[str, float | Ratio] = {name: work / (median_ms(t) / 1000)
                                        for name, t in times.items()}
    return speeds | {f"{a}/{b}": paired_ratio(times, a, b) for a, b in pairs}


def plot(results: dict[str, dict[int, dict[str, float]]], title: str, path: Path) -> None:
    """Throughput vs number of adapters, one panel per method (lora, adapter)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = {m: by_n for m, by_n in results.items() if m != FORMS}
    if not results:
        return
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


def run_method(backbone: VLBackbone, batch: VLBatch, method: str, counts: list[int],
               repeats: int, clock: str = "wall", decode: int = 0
               ) -> dict[int, dict[str, float]]:
    """Measure and print one method's line per adapter count (and its decode line)."""
    by_n = {}
    for n in counts:
        if method == FORMS:
            if n < len(MIXED_RECIPES):
                continue
            r = by_n[n] = measure_forms(backbone, batch, n, repeats, clock)
            print(f"{method:8s} N={n:4d}  four forms {r['four_forms']:9.0f}  LoRA only "
                  f"{r['lora_only']:9.0f} rows/s   four forms / LoRA only "
                  f"{r['four_forms/lora_only']}", flush=True)
            continue
        r = by_n[n] = measure(backbone, batch, method, n, repeats, clock)
        print(f"{method:8s} N={n:4d}  mixed {r['mixed']:9.0f}  uniform {r['uniform']:9.0f}"
              f"  backbone {r['backbone']:9.0f} rows/s   mixed/uniform "
              f"{r['mixed/uniform']}  mixed/backbone {r['mixed/backbone']}  admitted/uniform "
              f"{r['admitted/uniform']}", flush=True)
        if decode:
            d = r["decode"] = measure_decode(backbone, batch, method, n, decode, repeats, clock)
            print(f"{method:8s} N={n:4d}  decode {decode} tokens/row  mixed {d['mixed']:7.0f}  "
                  f"uniform {d['uniform']:7.0f}  backbone {d['backbone']:7.0f} tok/s   "
                  f"mixed/uniform {d['mixed/uniform']}  mixed/backbone {d['mixed/backbone']}",
                  flush=True)
    return by_n


def baseline(args: argparse.Namespace) -> str:
    """This benchmark's output as of `args.baseline` (its result lines printed)."""
    methods = [m for m in args.methods.split(",") if m in (*RECIPES, FORMS)]
    output = run_at_ref(args.baseline, "mixed_adapters", [
        "--preset", args.backbone or args.preset, "--methods", ",".join(methods),
        "--rows", str(args.rows),
        "--adapters", args.adapters, "--repeats", str(args.repeats),
        "--decode", str(args.decode),
        "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype],
        args.clock)
    for line in output.splitlines():
        if any(re.match(p, line) for p in (LINE, DECODE_LINE, FORMS_LINE)):
            print(f"  before | {line}", flush=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--backbone", help="a backbone folder (any family) instead of --preset")
    parser.add_argument("--methods", default="lora,adapter,forms")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--adapters", default="1,8,64,512")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--decode", type=int, default=0, metavar="TOKENS",
                        help="also time cached greedy decoding of TOKENS tokens per row "
                             "(lora, adapter; 0: off)")
    add_machine_options(parser)
    add_dtype_option(parser)
    add_baseline_option(parser)
    add_clock_option(parser)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    check_clock(parser, args)
    if args.decode < 0:
        parser.error(f"--decode: expected a number of tokens >= 0, got {args.decode}")
    pin_threads(args.threads)
    print(machine_line())
    backbone = load_backbone(args.backbone or args.preset)
    name = Path(args.backbone).name if args.backbone else args.preset
    backbone, batch = placed(backbone, random_batch(backbone, args.rows), args.device,
                             args.dtype)
    counts = [int(n) for n in args.adapters.split(",")]
    shown = f"backbone {args.backbone}" if args.backbone else f"preset {args.preset}"
    print(f"{shown}, batch {args.rows} rows ({batch.input_ids.shape[1]} text + "
          f"{batch.visual.shape[1]} visual tokens), device {args.device}, {args.dtype}; "
          f"rows/s = "
          f"median of {args.repeats} interleaved forwards (encoder + decoder, 4 labels), "
          f"{args.clock} clock")
    before = baseline(args) if args.baseline else ""
    results = {method: run_method(backbone, batch, method, counts, args.repeats, args.clock,
                                  args.decode)
               for method in args.methods.split(",")}
    if args.baseline:
        for baseline_name, pattern in (("uniform", UNIFORM_LINE), ("backbone", BACKBONE_LINE)):
            after = {(m, str(n)): r[f"mixed/{baseline_name}"].median
                     for m, by_n in results.items() if m != FORMS for n, r in by_n.items()}
            print_before_after(f"mixed / {baseline_name}", ratios_in(before, pattern), after,
                               args.baseline)
        if args.decode:
            after = {(m, str(n)): r["decode"]["mixed/uniform"].median
                     for m, by_n in results.items() if m != FORMS for n, r in by_n.items()}
            print_before_after(f"decode, mixed / uniform ({args.decode} tokens per row)",
                               ratios_in(before, DECODE_LINE), after, args.baseline)
        after = {(FORMS, str(n)): r["four_forms/lora_only"].median
                 for n, r in results.get(FORMS, {}).items()}
        print_before_after("four forms / LoRA only", ratios_in(before, FORMS_LINE), after,
                           args.baseline)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"mixed_adapters_{name}_{args.device}" + \
        ("" if args.dtype == "float32" else f"_{args.dtype}")
    plot(results, f"{name}, {args.rows} rows, {args.device}", out / f"{stem}.png")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
