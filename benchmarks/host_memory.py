"""Benchmark 11: freed memory kept in the process (`modeling.host_memory`) against glibc's
malloc as a process starts.

    python -m benchmarks.host_memory [--preset small] [--rows 64] [--adapters 8]
                                     [--decode 8] [--repeats 10] [--processes 3]
                                     [--clock wall|cpu]

glibc's settings stick to a process, so each side runs in fresh processes of its own,
alternating (default, kept, default, kept, ...; `--processes` of each). Every process
builds the same backbone, batch (`rows` rows, 12 text tokens, one image's visual tokens,
4 labels) and bank (N LoRA r8 sets, row i on slot i % N), then times `repeats`
teacher-forced forwards and `repeats` cached greedy decodes of `--decode` tokens per row
(the engine's loop), counting the minor page faults of each. Prints rows/s, tokens/s and
faults per call of both sides (medians over processes) and the ratio kept / default per
pair of processes (median, quartiles in parentheses), and the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import (
    CLOCKS,
    Ratio,
    add_clock_option,
    cached_greedy,
    machine_line,
    pin_threads,
    random_batch,
)
from benchmarks.mixed_adapters import bank_of
from modeling.cli_parser import positive_int
from modeling.families import load_backbone
from modeling.host_memory import keep_freed_memory
from modeling.kernels import RowIndex

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("default", "kept")


def timed(call: Callable[[], object], repeats: int, clock: str) -> tuple[float, float]:
    """(median seconds per call, minor page faults per call) of `repeats` calls."""
    now, seconds = CLOCKS[clock], []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start = now()
        call()
        seconds.append(now() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return statistics.median(seconds), faults / repeats


def child(args: argparse.Namespace) -> dict[str, float]:
    """One process's figures: forward and decode seconds and faults per call."""
    pin_threads(1)
    if args.child == "kept" and not keep_freed_memory():
        raise SystemExit("host_memory: malloc here is not glibc's; nothing to compare")
    backbone = load_backbone(args.preset)
    batch = random_batch(backbone, args.rows)
    bank = bank_of(backbone, "lora", args.adapters)
    index = RowIndex.of([i % args.adapters for i in range(args.rows)])
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, bank, index)
        forward = lambda: backbone(batch, bank, index)  # noqa: E731
        decode = lambda: cached_greedy(backbone, hidden, mask, bank, index,  # noqa: E731
                                       args.decode)
        forward(), decode()  # warm-up
        figures = {}
        for name, call in (("forward", forward), ("decode", decode)):
            figures[name], figures[f"{name}_faults"] = timed(call, args.repeats, args.clock)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rows", type=positive_int, default=64)
    parser.add_argument("--adapters", type=positive_int, default=8)
    parser.add_argument("--decode", type=positive_int, default=8, metavar="TOKENS")
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--processes", type=positive_int, default=3)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    add_clock_option(parser)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    pin_threads(1)  # what the children run with, as the machine line says
    print(machine_line())
    print(f"preset {args.preset}, {args.rows} rows on {args.adapters} LoRA adapters; "
          f"{args.processes} processes a side, {args.repeats} calls each, {args.clock} clock")
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    options = ["--preset", args.preset, "--rows", str(args.rows), "--adapters",
               str(args.adapters), "--decode", str(args.decode), "--repeats",
               str(args.repeats), "--clock", args.clock]
    for _ in range(args.processes):
        for side in SIDES:
            out = subprocess.run([sys.executable, "-m", "benchmarks.host_memory", *options,
                                  "--child", side], cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr.strip().splitlines()[-1], file=sys.stderr)
                return 2
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for name, work, unit in (("forward", args.rows, "rows/s"),
                             ("decode", args.rows * args.decode, "tokens/s")):
        rate = {side: work / statistics.median(r[name] for r in runs[side]) for side in SIDES}
        faults = {side: statistics.median(r[f"{name}_faults"] for r in runs[side])
                  for side in SIDES}
        ratio = Ratio.of([d[name] / k[name]
                          for d, k in zip(runs["default"], runs["kept"], strict=True)])
        print(f"{name:8s} default {rate['default']:8.0f} {unit}, {faults['default']:6.0f} "
              f"page faults per call | kept {rate['kept']:8.0f} {unit}, "
              f"{faults['kept']:6.0f} page faults per call | kept / default {ratio}",
              flush=True)
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
