"""Benchmark 12: the operations each forward launches, what a launch-bound GPU pays for.

    python -m benchmarks.launches [--preset small | --backbone FOLDER] [--rows 64]
                                  [--adapters 8] [--device cpu|cuda]
                                  [--dtype float32|bfloat16|float16]

On a GPU a small batch is bound by launching kernels, not by their arithmetic: on one H200
the bare vl-bart-base forward took 11-13 ms for 64 rows x 32 tokens and 57 ms for ten
times the tokens, and a batch mixing the four serve forms ran at 0.46-0.48 of a LoRA-only
batch while the CPU ran it at 0.91-0.93 (benchmarks/README.md, "On a GPU"). This script
counts, without timing anything, the torch operations one call runs that launch work: every
operation the dispatcher sees (a `TorchDispatchMode`) except views and other operations
that only describe memory (`METADATA`). One operation can launch more than one kernel
(attention, grouped matmuls), so a count is a proxy: at launch-bound sizes speed is about
inversely proportional to it (four forms / LoRA only: counted 0.43, measured 0.46-0.48 on
the H200). The counts follow the device's own code paths (some kernels choose theirs by
device), so run it with `--device cuda` for a GPU's exact count; the CPU's is within a
few percent.

Calls counted, on one batch of `rows` random requests (the `mixed_adapters` batch) and a
bank of N random adapter sets per method, rows on slot i % N:
backbone (no bank), LoRA on one slot (uniform), LoRA mixed, bottleneck mixed, four forms
mixed (`MIXED_RECIPES`) and LoRA only with the four forms' text lengths; then one cached
decode step (`modeling.decode_rows`) for the backbone, LoRA mixed and bottleneck mixed.
Prints each count (and host syncs: `.item()`-like reads) and its ratio against the
baseline of its line, counted in the same run.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import (
    add_dtype_option,
    add_machine_options,
    machine_line,
    pin_threads,
    placed,
    random_batch,
)
from benchmarks.mixed_adapters import FORMS, bank_of, in_admission_order, with_prompt_lengths
from modeling import decode_rows
from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import AdapterBank
from modeling.cli_parser import positive_int
from modeling.families import load_backbone
from modeling.kernels import RowIndex

# Operations that launch no work (the rest of the non-views do): they hand out tensors over
# existing or uninitialised memory.
METADATA = {"_unsafe_view", "lift_fresh", "empty", "empty_like", "empty_strided",
            "_reshape_alias", "detach"}
SYNC = "_local_scalar_dense"  # what .item(), int(t) and bool(t) dispatch to


class LaunchCount(TorchDispatchMode):
    """Counts the operations run inside it: `launches` (neither views nor `METADATA`) and
    `syncs` (reads of one value back to the host)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in METADATA:
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def launches(self) -> int:
        return sum(self.by_name.values())

    @property
    def syncs(self) -> int:
        return self.by_name[SYNC]


def counted(call: Callable[[], object]) -> LaunchCount:
    """The operations of one `call`, after a first uncounted one (caches warm, hooks
    registered, as in a served step)."""
    with torch.no_grad():
        call()
        with LaunchCount() as count:
            call()
    return count


def decode_step(backbone: VLBackbone, batch: VLBatch, bank: AdapterBank | None,
                index: RowIndex) -> Callable[[], torch.Tensor]:
    """One cached decode step of `batch`'s rows after their first (`modeling.decode_rows`),
    rows in the engine's admission order; the bare backbone's without a bank. Each call
    feeds one more token."""
    if bank is not None:
        batch, index = in_admission_order(batch, index, bank)
    rows = None if bank is None else index
    with torch.no_grad():
        hidden, mask = backbone.encode(batch, bank, rows)
        state, logits = decode_rows.start(backbone, hidden, mask, bank, rows)
    ids = logits.argmax(-1)
    return lambda: state.step(backbone, ids, bank, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--backbone", help="a backbone folder (any family) instead of --preset")
    parser.add_argument("--rows", type=positive_int, default=64)
    parser.add_argument("--adapters", type=positive_int, default=8,
                        help="adapter sets per bank, rows on slot i %% N (>= 4: every form)")
    add_machine_options(parser)
    add_dtype_option(parser)
    args = parser.parse_args(argv)
    if args.adapters < 4:
        parser.error(f"--adapters: the four-form bank needs at least 4 sets, got "
                     f"{args.adapters}")
    pin_threads(args.threads)
    print(machine_line())
    backbone = load_backbone(args.backbone or args.preset)
    backbone, batch = placed(backbone, random_batch(backbone, args.rows), args.device,
                             args.dtype)
    n = args.adapters
    index = RowIndex.of([i % n for i in range(args.rows)], device=args.device)
    uniform = RowIndex.of([0] * args.rows, device=args.device)
    banks = {method: bank_of(backbone, method, n) for method in ("lora", "adapter", FORMS)}
    same_lengths = with_prompt_lengths(batch, banks[FORMS], index)
    print(f"{args.backbone or args.preset}, {args.rows} rows, {n} adapters, device "
          f"{args.device}, {args.dtype}: operations that launch work per call (host syncs)")
    lines = [
        ("forward", "backbone", lambda: backbone(batch), None),
        ("forward", "LoRA uniform", lambda: backbone(batch, banks["lora"], uniform),
         "backbone"),
        ("forward", "LoRA mixed", lambda: backbone(batch, banks["lora"], index), "backbone"),
        ("forward", "bottleneck mixed", lambda: backbone(batch, banks["adapter"], index),
         "backbone"),
        ("forward", "LoRA only", lambda: backbone(same_lengths, banks["lora"], index), None),
        ("forward", "four forms", lambda: backbone(batch, banks[FORMS], index), "LoRA only"),
    ]
    for name, bank in (("backbone", None), ("LoRA mixed", banks["lora"]),
                       ("bottleneck mixed", banks["adapter"])):
        lines.append(("decode step", name, decode_step(backbone, batch, bank, index),
                      None if bank is None else "backbone"))
    counts: dict[tuple[str, str], int] = {}
    for kind, name, call, against in lines:
        count = counted(call)
        counts[(kind, name)] = count.launches
        versus = "" if against is None else \
            f"   {against} / {name} {counts[(kind, against)] / count.launches:.2f}"
        print(f"{kind:12s} {name:17s} {count.launches:6d} ({count.syncs}){versus}", flush=True)
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
