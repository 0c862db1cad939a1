"""Prefix attention in a batch where a quarter of the rows carry a prefix: every row's keys
widened to the longest prefix (the former path) against only the prefix rows widened.

    python -m benchmarks.prefix_attention [--repeats 7] [--threads 1]

Shapes of `small` (4 heads of 32) and of `vl-bart-base` (12 of 64), 8 slots of which 2
hold an 8-vector prefix, row i on slot i % 8; T5's relative-position bias where marked.
Both paths are checked equal first, then timed interleaved by the torch thread's CPU time
(medians); prints ms of each, of plain attention without any prefix, and widened / apart.
For a cached decode step's cross-attention (`KEPT_CASES`) it also times the prefix rows'
widened keys read from the decode cache (`DecodeRows.widened`, filled at a row's first
step) instead of widened again, and prints apart / kept.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from benchmarks.common import add_machine_options, machine_line, pin_threads
from modeling.bank import AdapterBank, PrefixBank
from modeling.hooks import AdapterContext, _with_prefix, prefix_attention
from modeling.kernels import RowIndex

SLOTS, PREFIX = 8, 8
# name -> (rows, heads, queries, keys, head_dim, causal, T5 bias)
CASES = {
    "small encoder, T5 bias": (512, 4, 36, 36, 32, False, True),
    "small cross, T5 bias": (512, 4, 4, 36, 32, False, True),
    "encoder (BART: no bias)": (512, 4, 36, 36, 32, False, False),
    "decoder self (causal)": (512, 4, 4, 4, 32, True, False),
    "decode step, cross": (512, 4, 1, 36, 32, False, False),
    "vl-bart-base encoder": (64, 12, 64, 64, 64, False, False),
}
KEPT_CASES = {"decode step, cross"}  # cross-attention of a cached decode step


class _Attention(nn.Module):
    def __init__(self, ctx: AdapterContext, causal: bool) -> None:
        super().__init__()
        self.vladapter_context, self.vladapter_site, self.is_causal = ctx, "site", causal


def _widened(module: nn.Module, q, k, v, mask, **kwargs):
    """The former path: every row's keys, mask (and bias) widened by the longest prefix."""
    ctx = module.vladapter_context
    k, v, mask, kwargs = _with_prefix(module, ctx.weights.prefix["site"], ctx.index, q, k, v,
                                      mask, kwargs)
    return sdpa_attention_forward(module, q, k, v, mask, **kwargs)


def _median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        call()
        times.append(time.thread_time() - start)
    return sorted(times)[repeats // 2] * 1000


def run_case(shape: tuple, repeats: int, kept: bool = False) -> dict[str, float]:
    """ms of one attention call of `shape` (see CASES) by path: plain, widened, apart and,
    when `kept`, the prefix rows' widened keys read from a decode cache's store."""
    rows, heads, q_len, k_len, head_dim, causal, bias = shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows, heads, n, head_dim, generator=gen)
               for n in (q_len, k_len, k_len))
    kwargs = {"scaling": head_dim ** -0.5}
    if bias:
        kwargs["position_bias"] = torch.randn(1, heads, q_len, k_len, generator=gen)
    padding = torch.arange(rows) % 5  # right padding of 0-4 keys per row
    mask = None if causal else (torch.arange(k_len) < k_len - padding[:, None]).view(
        rows, 1, 1, k_len).expand(rows, 1, q_len, k_len)
    lengths = torch.tensor([PREFIX if j % 4 == 3 else 0 for j in range(SLOTS)])
    bank = AdapterBank(slots=SLOTS, prefix={"site": PrefixBank(
        torch.randn(SLOTS, heads, PREFIX, head_dim, generator=gen),
        torch.randn(SLOTS, heads, PREFIX, head_dim, generator=gen), lengths)})
    ctx = AdapterContext()
    module = _Attention(ctx, causal)
    calls = {"plain": lambda: sdpa_attention_forward(module, q, k, v, mask, **kwargs),
             "widened": lambda: _widened(module, q, k, v, mask, **kwargs),
             "apart": lambda: prefix_attention(module, q, k, v, mask, **kwargs)}
    cross = _Attention(ctx, causal)
    cross.vladapter_cross_attention, store = True, {}
    if kept:
        calls["kept"] = lambda: _kept(ctx, store, cross, q, k, v, mask, kwargs)
    with torch.no_grad(), ctx.use(bank, RowIndex.of([i % SLOTS for i in range(rows)]),
                                  rows=rows):
        for name in calls.keys() - {"plain", "widened"}:
            diff = (calls["widened"]()[0] - calls[name]()[0]).abs().max()
            if diff > 1e-5:
                raise SystemExit(f"the widened and {name} paths differ by {float(diff):.3g}")
        times = {name: [] for name in calls}
        for _ in range(repeats):  # interleaved: each round times every path once
            for name, call in calls.items():
                times[name].append(_median_ms(call, 5))
    return {name: sorted(times[name])[repeats // 2] for name in calls}


def _kept(ctx: AdapterContext, store: dict, module: nn.Module, q, k, v, mask, kwargs):
    """`prefix_attention` at a cross-attention site during a cached decode step: `store`
    holds the prefix rows' widened keys from the first call on."""
    with ctx.keep_widened_cross(store):
        return prefix_attention(module, q, k, v, mask, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    add_machine_options(parser, device=False)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    print(machine_line())
    for name, shape in CASES.items():
        ms = run_case(shape, args.repeats, kept=name in KEPT_CASES)
        kept = f"  kept {ms['kept']:7.2f} ms   apart / kept {ms['apart'] / ms['kept']:.2f}" \
            if "kept" in ms else ""
        print(f"{name:26s} no prefix {ms['plain']:7.2f} ms  widened {ms['widened']:7.2f} ms  "
              f"apart {ms['apart']:7.2f} ms   widened / apart {ms['widened'] / ms['apart']:.2f}"
              f"{kept}", flush=True)
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
