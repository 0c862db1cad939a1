"""Benchmark 8: a device-bank cache miss, one slot written in place vs restacking the bank.

    python -m benchmarks.slot_write [--preset small] [--slots 16,64] [--repeats 5]

The server's slot table holds `slots` adapter sets stacked on the device. On a miss it now
writes the new set into the freed slot (`modeling.bank.write_slot`); before, it restacked
every slot (`build_bank`), which is the baseline here. Sets are VL-Adapter's single
shared adapter + LayerNorms (random weights); each miss places a different set in slot 0.
Both banks are checked to hold the same values. Prints median ms per miss and the ratio.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import (
    add_machine_options,
    interleaved,
    machine_line,
    median_ms,
    pin_threads,
    random_adapter,
)
from modeling.backbone import VLBackbone
from modeling.bank import build_bank, write_slot
from modeling.families import load_backbone
from modeling.presets import method_preset


def measure(backbone: VLBackbone, slots: int, repeats: int) -> tuple[float, float, bool]:
    """(ms per in-place miss, ms per restack, whether both banks hold the same values)."""
    frozen, like = backbone.frozen_tensors(), next(backbone.parameters())
    d_model = backbone.config.d_model
    sets = [random_adapter(backbone, method_preset("single_adapter"), ["vqa"], seed)
            .materialize("vqa") for seed in range(slots + 2)]
    resident, spare = sets[:slots], sets[slots:]
    bank = build_bank(resident, frozen, d_model, like)
    turn = [0]

    def in_place() -> None:
        turn[0] += 1
        assert write_slot(bank, 0, spare[turn[0] % 2], frozen)

    def restack() -> None:
        turn[0] += 1
        build_bank([spare[turn[0] % 2], *resident[1:]], frozen, d_model, like)

    times = interleaved({"in place": in_place, "restack": restack}, repeats)
    assert write_slot(bank, 0, spare[0], frozen)
    fresh = build_bank([spare[0], *resident[1:]], frozen, d_model, like)
    same = all(torch.equal(a.down_weight, b.down_weight) and torch.equal(a.up_bias, b.up_bias)
               for a, b in zip(bank.bottleneck.values(), fresh.bottleneck.values(),
                               strict=True))
    same = same and all(torch.equal(bank.overrides[n], fresh.overrides[n])
                        for n in fresh.overrides)
    return median_ms(times["in place"]), median_ms(times["restack"]), same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--slots", default="16,64")
    parser.add_argument("--repeats", type=int, default=5)
    add_machine_options(parser)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    print(machine_line())
    backbone = load_backbone(args.preset).to(args.device)
    one = random_adapter(backbone, method_preset("single_adapter"), ["vqa"], 0)
    nbytes = sum(t.numel() * t.element_size() for t in one.materialize("vqa").tensors())
    print(f"preset {args.preset}, single_adapter sets of {nbytes / 2**20:.2f} MiB, device "
          f"{args.device}; median of {args.repeats} misses each")
    for slots in (int(n) for n in args.slots.split(",")):
        in_place, restack, same = measure(backbone, slots, args.repeats)
        print(f"{slots:4d} slots: in place {in_place:8.2f} ms  restack {restack:8.2f} ms  "
              f"ratio {restack / in_place:6.1f}x  same values: {same}", flush=True)
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
