"""Benchmark 7: the engine's cached decode against recomputing the decoder prefix per step.

    python -m benchmarks.decode_cache [--preset small] [--rows 8] [--tokens 8,32]
                                      [--method adapter|lora|forms] [--repeats 5]
                                      [--threads 1] [--clock wall|cpu] [--baseline GIT_REF]

Iteration-level batching lets rows join and leave between steps. The server first decoded
by recomputing every running row's whole decoder prefix each step (no key/value cache);
it now keeps the rows' caches in one left-padded batch (`modeling.decode_rows`). Both
are timed here on the same rows (a bank of 4 random adapters, rows cycling over them),
calls interleaved: `rows` greedy rows produce `tokens` tokens each (no early stop), and
the two must produce the same tokens. Prints tokens/s of each and the speed-up.
`--method forms` cycles the bank over the four serve forms (a quarter of the rows carry a
key/value prefix). With `--baseline GIT_REF` the same options first run on the code of
GIT_REF in a subprocess, and each speed-up is printed before -> after: the recomputing loop
is the yardstick both runs share, so a change to the cached step shows in the ratio.
"""

from __future__ import annotations

import argparse
import re

import torch

from benchmarks.common import (
    add_baseline_option,
    add_clock_option,
    add_machine_options,
    cached_greedy,
    check_clock,
    interleaved,
    machine_line,
    median_ms,
    pin_threads,
    print_before_after,
    random_batch,
    ratios_in,
    run_at_ref,
)
from benchmarks.mixed_adapters import bank_of
from modeling.backbone import VLBackbone
from modeling.families import load_backbone
from modeling.kernels import RowIndex

# A result line: "   8 tokens/row  cached ... speed-up 1.26x  same tokens: True"
LINE = r"\s*(?P<tokens>\d+) tokens/row .* speed-up (?P<ratio>[\d.]+)x"


@torch.no_grad()
def recomputed(backbone: VLBackbone, hidden, mask, bank, index, tokens: int) -> list[list[int]]:
    """The former loop: every step runs the decoder over each row's whole prefix."""
    ids = torch.full((hidden.shape[0], 1), backbone.decoder_start_token_id,
                     device=hidden.device)
    for _ in range(tokens):
        logits = backbone.decode(hidden, mask, ids, bank=bank, index=index).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, 1:].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", default="8,32")
    parser.add_argument("--method", default="adapter")
    parser.add_argument("--repeats", type=int, default=5)
    add_machine_options(parser)
    add_baseline_option(parser)
    add_clock_option(parser)
    args = parser.parse_args(argv)
    check_clock(parser, args)
    pin_threads(args.threads)
    print(machine_line())
    before = baseline(args) if args.baseline else ""
    backbone = load_backbone(args.preset).to(args.device).eval()
    batch = random_batch(backbone, args.rows).to(args.device)
    bank = bank_of(backbone, args.method, 4)
    index = RowIndex.of(torch.arange(args.rows, device=args.device) % 4)
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, bank, index)
    print(f"preset {args.preset}, {args.rows} rows over 4 {args.method} adapters, encoder "
          f"length {hidden.shape[1]}, device {args.device}; median of {args.repeats}")
    after = {}
    for tokens in (int(t) for t in args.tokens.split(",")):
        same = cached_greedy(backbone, hidden, mask, bank, index, tokens) == \
            recomputed(backbone, hidden, mask, bank, index, tokens)
        times = interleaved({
            "cached": lambda t=tokens: cached_greedy(backbone, hidden, mask, bank, index, t),
            "recomputed": lambda t=tokens: recomputed(backbone, hidden, mask, bank, index, t),
        }, args.repeats, clock=args.clock)
        rate = {name: args.rows * tokens / (median_ms(t) / 1000) for name, t in times.items()}
        print(f"{tokens:4d} tokens/row  cached {rate['cached']:8.0f} tok/s  recomputed "
              f"{rate['recomputed']:8.0f} tok/s  speed-up {rate['cached'] / rate['recomputed']:.2f}"
              f"x  same tokens: {same}", flush=True)
        after[(str(tokens),)] = rate["cached"] / rate["recomputed"]
    if args.baseline:
        print_before_after("cached / recomputed (tokens per row)", ratios_in(before, LINE),
                           after, args.baseline)
    print(machine_line())
    return 0


def baseline(args: argparse.Namespace) -> str:
    """This benchmark's output as of `args.baseline` (its result lines printed)."""
    output = run_at_ref(args.baseline, "decode_cache", [
        "--preset", args.preset, "--rows", str(args.rows), "--tokens", args.tokens,
        "--method", args.method, "--repeats", str(args.repeats),
        "--threads", str(args.threads), "--device", args.device], args.clock)
    for line in output.splitlines():
        if re.match(LINE, line):
            print(f"  before | {line}", flush=True)
    return output


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
